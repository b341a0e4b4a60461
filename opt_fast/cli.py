"""``opt-fast``: train (OPT or its baseline), and make or inspect datasets."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from opt_fast import config as config_module
from opt_fast.config import BUDGETS, Config, resolve

# Options with their own, shorter spelling below; every other Config field becomes --field-name.
_SPECIAL = {"env", "dataset", "seed", "budget", "opt", "compile", "extra"}


def field_docs() -> dict[str, str]:
    """Each Config field's docstring (the string literal under it), for --help."""
    tree = ast.parse(inspect.getsource(config_module.Config))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())  # type: ignore[union-attr]
    return docs


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 256,256, got {text!r}") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    docs = field_docs()
    defaults = Config()
    s = argparse.SUPPRESS
    parser.add_argument("--env", default=s, help=f"{docs['env']} (default {defaults.env})")
    parser.add_argument("--dataset", default=s, metavar="PATH", help=docs["dataset"])
    parser.add_argument("--seed", type=int, default=s, help="random seed (default 0)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=s,
                        help=f"{docs['budget']} (default {defaults.budget}); phase lengths: "
                        + "; ".join(f"{k}: {v}" for k, v in BUDGETS.items()))
    parser.add_argument("--no-opt", dest="opt", action="store_false", default=s,
                        help="run the paper's TD3 baseline (TD3+BC offline -> TD3 online, same replay) instead of OPT")
    parser.add_argument("--compile", action="store_true", default=s, help=docs["compile"])
    parser.add_argument("--compare", action="store_true",
                        help="run both TD3 and TD3+OPT (sharing the offline phase) and print them side by side")
    parser.add_argument("--out", default="runs", help="root of run directories (default runs/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run of the same configuration from its last checkpoint")
    tuning = parser.add_argument_group("every other setting (defaults: the paper's values, OPT.md §4)")
    for f in dataclasses.fields(Config):
        if f.name in _SPECIAL:
            continue
        default = getattr(defaults, f.name)
        kind = type(default)
        if kind is bool:
            parse: Any = _parse_bool
        elif kind is tuple:
            parse = _parse_ints
        elif f.name == "dataset":
            parse = str
        else:
            parse = kind
        shown = ",".join(map(str, default)) if kind is tuple else default
        tuning.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=parse, default=s,
                            help=f"{docs.get(f.name, '')} (default {shown})".strip())


def _dataset_kind(env: str) -> str:
    from opt_fast.data.names import parse_dataset_name

    return parse_dataset_name(env).kind


def run_dir_for(out: Path, config: Config) -> Path:
    from opt_fast.data.names import parse_dataset_name

    variant = "opt" if config.opt else "td3"
    return out / parse_dataset_name(config.env).d4rl_id / f"{variant}-{config.budget}-seed{config.seed}-{config.digest()}"


def d4rl_file(name) -> Path | None:
    """The real D4RL file of a dataset in $D4RL_DATASET_DIR, if it is there."""
    from opt_fast.data.names import resolve_dataset_path

    try:
        return resolve_dataset_path(name)
    except FileNotFoundError:
        return None


def generated_data_dir() -> Path:
    return Path(os.environ.get("OPT_FAST_DATA_DIR", Path.home() / ".opt_fast" / "datasets"))


def generated_path(name, env_version: str, budget: str) -> Path:
    return generated_data_dir() / f"generated-{env_version}-{budget}" / name.d4rl_filename


def load_training_data(config: Config):
    """The offline dataset: --dataset, else the D4RL file, else locally generated data (made if missing)."""
    from opt_fast.data.d4rl import load_dataset
    from opt_fast.data.names import parse_dataset_name

    if config.dataset is not None:
        return load_dataset(config.dataset)
    name = parse_dataset_name(config.env)
    real = d4rl_file(name)
    if real is not None:
        return load_dataset(real)
    generated = generated_path(name, config.env_version, config.budget)
    if not generated.exists():
        from opt_fast.data.generate import generate

        print(f"notice: no D4RL file for {name.d4rl_id} in $D4RL_DATASET_DIR; generating it locally with D4RL's "
              f"recipe (budget {config.budget}) into {generated.parent}. Scores on it are labelled 'generated', "
              f"not D4RL.", file=sys.stderr)
        generate(name.d4rl_id, generated.parent, seed=0, budget=config.budget, env_version=config.env_version)
    return load_dataset(generated)


def train(config: Config, out: Path, resume: bool) -> dict[str, Any]:
    from opt_fast.pipeline import open_run

    dataset = load_training_data(config)
    run_dir = run_dir_for(out, config)
    print(f"run directory: {run_dir}", file=sys.stderr)
    trainer = open_run(config, run_dir, dataset, resume, cache_dir=run_dir.parent / "_offline")
    return trainer.run()


def format_table(summaries: list[dict[str, Any]]) -> str:
    phases = ["offline", "collect", "pretrain", "finetune"]
    header = "| variant | data | " + " | ".join(f"after {p}" for p in phases) + " |"
    lines = [header, "|" + "---|" * (len(phases) + 2)]
    for s in summaries:
        cells = [f"{s['phase_scores'][p]:.1f}" if p in s["phase_scores"] else "-" for p in phases]
        lines.append(f"| {s['variant']} | {s['dataset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    base = Config()
    kind = _dataset_kind(overrides.get("env", base.env))
    variants = [False, True] if args.compare else [overrides.get("opt", True)]
    summaries = {}
    for use_opt in variants:
        config = resolve(base, {**overrides, "opt": use_opt}, kind)
        summaries[use_opt] = train(config, Path(args.out), args.resume)
    # Show the other variant too when an earlier run of it (same settings otherwise) has finished.
    for use_opt in {True, False} - set(summaries):
        sibling = run_dir_for(Path(args.out), resolve(base, {**overrides, "opt": use_opt}, kind)) / "summary.json"
        if sibling.exists():
            summaries[use_opt] = json.loads(sibling.read_text())
    ordered = [summaries[k] for k in (False, True) if k in summaries]
    print("\nD4RL-normalised score of the deterministic policy at the end of each phase "
          f"(data: {ordered[0]['data_source']}):")
    print(format_table(ordered))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from opt_fast.data.d4rl import dataset_info
    from opt_fast.data.names import parse_dataset_name

    if args.data_command == "generate":
        from opt_fast.data.generate import generate

        name = parse_dataset_name(args.name)
        out = Path(args.out) if args.out else generated_path(name, args.env_version, args.budget).parent
        path = generate(name.d4rl_id, out, seed=args.seed, budget=args.budget, env_version=args.env_version)
        print(path)
        return 0
    target = Path(args.name)
    if not target.exists():
        name = parse_dataset_name(args.name)
        candidates = [d4rl_file(name)] + [generated_path(name, "v5", b) for b in BUDGETS]
        found = [p for p in candidates if p is not None and p.exists()]
        if not found:
            raise FileNotFoundError(f"no file for {name.d4rl_id}: looked in $D4RL_DATASET_DIR and "
                                    f"{[str(p) for p in candidates[1:]]}")
        target = found[0]
    print(json.dumps(dataset_info(target), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opt-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", help="offline pre-training -> OPT -> fine-tuning"))
    data = commands.add_parser("data", help="make or inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    generate = data_commands.add_parser("generate", help="make a dataset with D4RL's recipe (SAC behaviour policy)")
    generate.add_argument("name", help="dataset name, e.g. hopper-medium-replay")
    generate.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="generation size (default quick)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the behaviour-policy training (default 0)")
    generate.add_argument("--env-version", default="v5", help="gymnasium MuJoCo version (default v5)")
    generate.add_argument("--out", default=None, help="directory to write to (default $OPT_FAST_DATA_DIR/...)")
    info = data_commands.add_parser("info", help="rows, episodes, returns and metadata of a dataset")
    info.add_argument("name", help="dataset name or path to an hdf5 file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
            return cmd_train(args, overrides)
        return cmd_data(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"opt-fast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
