"""``opt-fast``: train (OPT or its baseline), and make or inspect datasets."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from opt_fast import config as config_module
from opt_fast import runtime
from opt_fast.config import BUDGETS, DATA_BUDGET, PHASES, Config
from opt_fast.datagen import generate_data
from opt_fast.runs import (d4rl_file, differing_runs, generated_path, load_training_data, phase_cache_dir,
                           resolve_for, run_dir_for)

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
    parser.add_argument("--allow-env-mismatch", action="store_true",
                        help="train on a --dataset whose name or metadata says it is another task family's data "
                        "than --env's (refused otherwise)")
    parser.add_argument("--seed", type=int, default=s, help="random seed (default 0)")
    parser.add_argument("--seeds", default=None, metavar="SEEDS",
                        help="several seeds, e.g. 0-2 or 0,3,5, trained together with the seed as a batch dimension "
                        "(one batched network call and one env step for all seeds); each seed's run has its own "
                        "directory, metrics and checkpoints; the table shows the mean ± 95%% CI over seeds")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=s,
                        help=f"{docs['budget']} (default {defaults.budget}); phase lengths: "
                        + "; ".join(f"{k}: {v}" for k, v in BUDGETS.items()))
    parser.add_argument("--no-opt", dest="opt", action="store_false", default=s,
                        help="run the paper's baseline (TD3+BC -> TD3, or SPOT -> SPOT; same replay) instead of OPT")
    parser.add_argument("--compile", action="store_true", default=s, help=docs["compile"])
    parser.add_argument("--compare", action="store_true",
                        help="run both the baseline and OPT (sharing the offline phase) and print them side by side")
    parser.add_argument("--adroit-data", default=None, metavar="DIR",
                        help="directory of the DAPG release (dapg_<task>_policy.npz, door_human_demos.npz), needed "
                        "to generate Adroit datasets that are not on disk")
    parser.add_argument("--out", default="runs", help="root of run directories (default runs/)")
    parser.add_argument("--until", choices=PHASES[:3], default=None,
                        help="stop after this phase (e.g. pretrain: Q_on pre-trained, before fine-tuning), leaving "
                        "summary-<phase>.json; --resume without --until continues the same run to the end")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run of the same configuration from its last checkpoint")
    parser.add_argument("--log", default=None, metavar="SINKS",
                        help="also send the metrics records (evaluations, and the training records of every "
                        "--log-every steps) to tensorboard (<run dir>/tensorboard) and/or wandb (offline, <run "
                        "dir>/wandb), comma-separated; off by default, each needs its package")
    tuning = parser.add_argument_group("every other setting (defaults: the paper's values, docs/method.md §4)")
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


def train(configs: list[Config], out: Path, resume: bool, dataset, until: str | None = None,
          sinks: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Train one run, or several seeds as one batch (configs that differ only in the seed) on ``dataset``, to the
    end or until phase ``until`` has ended, mirroring the metrics to ``sinks``; each seed's summary. With
    ``resume``, says for each seed what it continues, or why there was nothing to continue."""
    from opt_fast.pipeline import open_seed_batch

    run_dirs = [run_dir_for(out, config, dataset.content_digest) for config in configs]
    finished = "summary.json" if until is None else f"summary-{until}.json"
    if resume and all((run_dir / finished).exists() and not (run_dir / "checkpoints" / "latest.pt").exists()
                      for run_dir in run_dirs):
        # A finished run whose small outputs were restored without its checkpoints (results/study/run.sh on a new
        # machine) is kept, not started again; one with its checkpoints resumes as usual.
        for run_dir in run_dirs:
            print(f"--resume: {run_dir} already finished (its {finished} is kept); nothing to run", file=sys.stderr)
        return [json.loads((run_dir / finished).read_text()) for run_dir in run_dirs]
    for config, run_dir in zip(configs, run_dirs):
        print(f"run directory: {run_dir}", file=sys.stderr)
        if resume and not (run_dir / "config.json").exists():
            others = differing_runs(out, config, dataset.content_digest)
            print(f"--resume: no run of this configuration and data in {out}; starting a new one"
                  + ("".join(f"\n  existing run {line}" for line in others)
                     if others else " (no other run of this dataset, variant, budget and seed either)"),
                  file=sys.stderr)
    trainer = open_seed_batch(configs, run_dirs, dataset, resume, cache_dir=phase_cache_dir(run_dirs[0]), sinks=sinks)
    return trainer.run(after=until)


def format_table(variants: list[list[dict[str, Any]]]) -> str:
    """One row per variant: its score at the end of each phase, the mean ± 95% CI over its seeds' summaries when
    there are several."""
    from opt_fast.report import mean_ci

    phases = ["offline", "collect", "pretrain", "finetune"]
    header = "| variant | data | seeds | " + " | ".join(f"after {p}" for p in phases) + " |"
    lines = [header, "|" + "---|" * (len(phases) + 3)]
    for summaries in variants:
        cells = []
        for phase in phases:
            scores = [s["phase_scores"][phase] for s in summaries if phase in s["phase_scores"]]
            stat = mean_ci(scores) if scores else None
            cells.append("-" if stat is None else f"{stat.mean:.1f}" + (
                f" ± {stat.half_width:.1f}" if stat.half_width is not None else ""))
        first = summaries[0]
        seeds = ",".join(str(s["seed"]) for s in summaries)
        lines.append(f"| {first['variant']} | {first['dataset']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from opt_fast.ablate import parse_seeds
    from opt_fast.metrics import parse_sinks

    sinks = parse_sinks(args.log)
    base = Config()
    if args.seeds is not None and "seed" in overrides:
        raise ValueError("give --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [overrides.get("seed", base.seed)]
    # Several seeds train as one batch: seed_batch names them (a run of its own has none).
    seed_batch = tuple(seeds) if len(seeds) > 1 else ()

    def configs(use_opt: bool) -> list[Config]:
        return [resolve_for(base, {**overrides, "seed": seed, "seed_batch": seed_batch, "opt": use_opt})
                for seed in seeds]

    variants = [False, True] if args.compare else [overrides.get("opt", True)]
    dataset = load_training_data(configs(variants[0])[0], args.adroit_data, args.allow_env_mismatch)
    summaries = {use_opt: train(configs(use_opt), Path(args.out), args.resume, dataset, args.until, sinks)
                 for use_opt in variants}
    # Show the other variant too when earlier runs of it (same settings otherwise) have finished for every seed.
    for use_opt in {True, False} - set(summaries):
        siblings = [run_dir_for(Path(args.out), config, dataset.content_digest) / "summary.json"
                    for config in configs(use_opt)]
        if all(path.exists() for path in siblings):
            summaries[use_opt] = [json.loads(path.read_text()) for path in siblings]
    ordered = [summaries[k] for k in (False, True) if k in summaries]
    print("\nD4RL-normalised score of the deterministic policy at the end of each phase "
          f"(data: {ordered[0][0]['data_source']}):")
    print(format_table(ordered))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from opt_fast.data.d4rl import dataset_info
    from opt_fast.data.names import MINARI_PREFIX, parse_dataset_name

    if args.data_command == "generate":
        name = parse_dataset_name(args.name)
        out = Path(args.out) if args.out else generated_path(name, args.env_version, args.budget).parent
        path = generate_data(name, out, args.seed, args.budget, args.env_version, args.adroit_data, args.policy_steps)
        print(path)
        return 0
    if args.data_command == "compare":
        from opt_fast.data.published import comparison_table

        paths = [Path(n) if Path(n).exists() else generated_path(parse_dataset_name(n), args.env_version, args.budget)
                 for n in args.names]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data compare: no such dataset file: {', '.join(missing)} (generate it first: "
                                    f"opt-fast data generate NAME --budget {args.budget})")
        print(comparison_table([dataset_info(p) for p in paths]))
        return 0
    if args.name.lower().startswith(MINARI_PREFIX):
        from opt_fast.data.minari import minari_info

        print(json.dumps(minari_info(args.name[len(MINARI_PREFIX):]), indent=2))
        return 0
    target = Path(args.name)
    if not target.exists() and (target.suffix in (".hdf5", ".h5") or os.sep in args.name):
        raise FileNotFoundError(f"no dataset file at {target}")
    if not target.exists():
        name = parse_dataset_name(args.name)
        candidates = [d4rl_file(name)] + [generated_path(name, "v5", b) for b in sorted(set(DATA_BUDGET.values()))]
        found = [p for p in candidates if p is not None and p.exists()]
        if not found:
            raise FileNotFoundError(f"no file for {name.d4rl_id}: looked in $D4RL_DATASET_DIR and "
                                    f"{[str(p) for p in candidates[1:]]}")
        target = found[0]
    print(json.dumps(dataset_info(target), indent=2))
    return 0


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs", help="root of run directories (default runs/)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="run on the Ray cluster at ADDRESS (HOST:PORT from a node of the cluster, "
                        "ray://HOST:10001 from elsewhere, or auto)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what they reuse; run nothing")
    parser.add_argument("--report", metavar="DIR", default=None, help="write a report of these runs to DIR")


def add_study_commands(commands: argparse._SubParsersAction) -> None:
    from opt_fast.ablate import VARIANTS

    ablate = commands.add_parser("ablate", help="N_tau x N_pretrain grids and the paper's ablations, sharing phases")
    ablate.add_argument("--env", required=True, help="dataset name(s), comma-separated")
    ablate.add_argument("--seeds", default="0", help="seeds, e.g. 0-4 or 0,2,5 (default 0)")
    ablate.add_argument("--n-tau", default=None, help="N_tau values, e.g. 0,5000,25000 (default: the budget's)")
    ablate.add_argument("--n-pretrain", default=None, help="N_pretrain values (default: the budget's)")
    ablate.add_argument("--variants", default="opt", help=f"comma-separated, of: {', '.join(VARIANTS)} (default opt)")
    ablate.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="protocol size (default quick)")
    ablate.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting for every run, the value in JSON: --set hidden=[64,64] --set utd=2")
    _add_sweep_options(ablate)
    sweep = commands.add_parser("sweep", help="run a sweep file (datasets x seeds x variants) locally or on Ray")
    sweep.add_argument("config", help="YAML or JSON sweep file (keys: see opt_fast.sweep.load_sweep)")
    _add_sweep_options(sweep)
    report = commands.add_parser("report", help="Markdown + HTML report with figures of finished runs")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or directories that hold them")
    report.add_argument("--out", default="report", help="output directory (default report/)")
    report.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")
    report.add_argument("--bootstrap-reps", type=int, default=10_000, help="bootstrap resamples (default 10000)")


def _settings(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs; VALUE is read as JSON, else taken as a string."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        key = key.strip().replace("-", "_")
        settings[key] = os.path.abspath(value) if key == "dataset" and isinstance(value, str) else value
    return settings


def cmd_study(args: argparse.Namespace) -> int:
    """``ablate`` and ``sweep``: expand, run (or list), and optionally report."""
    from opt_fast import ablate, sweep

    if args.command == "sweep":
        spec = sweep.load_sweep(Path(args.config))
    else:
        spec = ablate.AblationSpec(
            datasets=args.env.split(","), seeds=ablate.parse_seeds(args.seeds),
            variants=ablate.variant_overrides(args.variants.split(",")), budget=args.budget,
            n_tau=ablate.parse_ints(args.n_tau, "--n-tau") if args.n_tau else None,
            n_pretrain=ablate.parse_ints(args.n_pretrain, "--n-pretrain") if args.n_pretrain else None,
            base=_settings(args.settings))
    configs, skipped = ablate.expand(spec)
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if args.dry_run:
        digests = sweep.ensure_datasets(configs, generate=False)
        print(sweep.describe_plan(sweep.plan(configs, digests), Path(args.out)))
        return 0
    try:
        summaries = sweep.run_sweep(configs, Path(args.out), args.workers, args.ray)
    except sweep.SweepError as err:
        print(f"opt-fast: {err}", file=sys.stderr)
        return 1
    print(f"{len(summaries)} run(s) finished under {args.out}")
    if args.report:
        from opt_fast.report import build_report

        print(build_report([Path(p) for p in summaries], Path(args.report), command=_command_line()).markdown)
    return 0


def _command_line() -> str:
    """This invocation as typed (program name shortened to ``opt-fast``), for the provenance of what it writes."""
    return " ".join(["opt-fast", *map(shlex.quote, sys.argv[1:])])


def cmd_report(args: argparse.Namespace) -> int:
    from opt_fast.report import build_report

    report = build_report([Path(p) for p in args.runs], Path(args.out), paper=not args.no_paper,
                          bootstrap_reps=args.bootstrap_reps, command=_command_line())
    print(report.markdown)
    print(report.html)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opt-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", help="offline pre-training -> OPT -> fine-tuning"))
    data = commands.add_parser("data", help="make or inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    generate = data_commands.add_parser(
        "generate", help="make a dataset with D4RL's recipe: MuJoCo (SAC behaviour policy), Adroit (DAPG policies "
        "and door demonstrations), AntMaze (goal-reaching ant + waypoints; resumable)")
    generate.add_argument("name", help="dataset name, e.g. hopper-medium-replay")
    generate.add_argument("--budget", choices=sorted(set(DATA_BUDGET.values())), default="quick", help="generation size (default quick)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the behaviour-policy training (default 0)")
    generate.add_argument("--env-version", default="v5", help="gymnasium MuJoCo version (default v5)")
    generate.add_argument("--out", default=None, help="directory to write to (default $OPT_FAST_DATA_DIR/...)")
    generate.add_argument("--adroit-data", default=None, metavar="DIR",
                          help="Adroit: directory of the DAPG release (dapg_<task>_policy.npz, door_human_demos.npz)")
    generate.add_argument("--policy-steps", type=int, default=None, metavar="N",
                          help="AntMaze: SAC steps of the goal-reaching ant (default by --budget); training resumes "
                          "from its checkpoint in the output directory")
    info = data_commands.add_parser("info", help="rows, episodes, returns and metadata of a dataset")
    info.add_argument("name", help="dataset name, path to an hdf5 file, or minari:<Minari dataset id>")
    compare = data_commands.add_parser(
        "compare", help="a Markdown table of generated datasets beside D4RL's published statistics (rows, episodes, "
        "returns) and the SAC step at which each medium policy was found")
    compare.add_argument("names", nargs="+", help="dataset names (their generated files of --budget) or hdf5 paths")
    compare.add_argument("--budget", choices=sorted(set(DATA_BUDGET.values())), default="quick",
                         help="generation budget of the named datasets (default quick)")
    compare.add_argument("--env-version", default="v5", help="gymnasium MuJoCo version (default v5)")
    add_study_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runtime.configure()  # every command trains something (SAC for data, the phases, sweep workers)
    try:
        if args.command == "train":
            overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
            return cmd_train(args, overrides)
        if args.command in ("ablate", "sweep"):
            return cmd_study(args)
        if args.command == "report":
            return cmd_report(args)
        return cmd_data(args)
    # Bad input of any kind (options, files, data, a full or read-only --out) ends in one line naming it, no traceback.
    except (ValueError, OSError, KeyError, ImportError) as err:
        print(f"opt-fast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
