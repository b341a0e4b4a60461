"""Run many configurations -- a sweep file's datasets x seeds x variants, or an ablation grid -- on a local process
pool or a Ray cluster, doing every shared phase once.

Tasks are idempotent. A run lives in the directory named by its config hash and the content digest of its data
(``opt_fast.runs.run_dir_for``); a task
returns a finished run's ``summary.json`` untouched, resumes an interrupted run from its last checkpoint, and holds
a file lock on the run directory while it works, so a run is never done twice at once. A task whose worker was lost
can therefore simply run again: Ray retries it, the local pool re-drives the plan with a new pool.

Reuse. Runs that share their offline phase (``OFFLINE_FIELDS``: dataset, seed, backbone settings) form a group. The
group's lead -- its OPT run with the largest N_tau -- first runs up to the end of its collection; that stores the
offline phase (``<dataset>/_offline/offline-<hash>-<data>.pt``, keyed by ``OFFLINE_FIELDS`` and the data's content
digest) and the collection's state at the N_tau of every other run of the group (``collect-<hash>-<data>-<step>.pt``,
keyed by ``COLLECT_FIELDS`` and the data). Then every
run of the group, the lead included, starts from those: N_tau = 5000 takes the first 5000 steps of the 25000-step
collection of the same seed. (A lead that had finished its collection in an earlier sweep stores nothing new; runs
with an N_tau it did not store then collect on their own.)

On a cluster, the output directory and the datasets must be on a filesystem every node sees, and ``opt_fast`` must
be importable on every node; ``OPT_FAST_*`` and ``D4RL_DATASET_DIR`` are passed on from the driver's environment.
"""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt_fast.ablate import AblationSpec, check_overrides, describe, parse_seeds, variant_overrides
from opt_fast.config import COLLECT_FIELDS, OFFLINE_FIELDS, PRETRAIN_FIELDS, Config
from opt_fast.io import read_json
from opt_fast.runs import load_training_data, phase_cache_dir, run_dir_for

# Keys of a sweep file; see load_sweep.
_FILE_KEYS = ("datasets", "seeds", "variants", "budget", "n_tau", "n_pretrain", "base")


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others finished (and stay finished when the sweep is run again)."""


@dataclass(frozen=True)
class Task:
    config: Config
    data_digest: str | None
    """Content digest of the run's data (``OfflineDataset.content_digest``), which names its run directory; None
    in a dry run's plan for data not made yet."""
    stop: str = "done"
    """Run the phases before this one (``done``: all of them)."""
    snapshots: tuple[int, ...] = ()
    """Env steps at which the run's collection stores its state for runs with that N_tau."""
    pretrain_snapshots: tuple[int, ...] = ()
    """Pre-training steps at which the run stores its state for runs with that N_pretrain."""


@dataclass(frozen=True)
class Group:
    """Runs sharing a prefix: ``prepare`` (their lead up to the end of the shared part) first, then ``runs`` (tasks,
    or groups sharing a longer prefix)."""

    prepare: Task
    runs: tuple[Task | Group, ...]

    def tasks(self) -> list[Task]:
        """Every run of the group, nested groups included (their leads are among their runs)."""
        return [task for run in self.runs for task in (run.tasks() if isinstance(run, Group) else [run])]


# ------------------------------------------------------------------------------------------ sweep files
def load_sweep(path: Path) -> AblationSpec:
    """Read a sweep file (YAML for ``.yaml``/``.yml``, else JSON)::

        datasets: [hopper-medium-replay, walker2d-medium]   # --env names
        seeds: 0-4                                          # or a list
        variants: [opt, baseline]                           # names from opt_fast.ablate.VARIANTS, or a mapping
                                                            #   name -> config overrides ({} for plain OPT)
        budget: quick                                       # paper | quick | smoke
        n_tau: [0, 5000, 25000]                             # optional grid; default the budget's values
        n_pretrain: [0, 50000]
        base: {hidden: [256, 256]}                          # optional overrides for every run

    A relative ``dataset`` path is taken relative to the file.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{where}: YAML syntax error: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: JSON syntax error: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with keys {', '.join(_FILE_KEYS)}")
    unknown = sorted(set(data) - set(_FILE_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {', '.join(_FILE_KEYS)}")
    for key in ("datasets", "seeds"):
        if key not in data:
            raise ValueError(f"{path}: missing {key!r}")
    datasets = [data["datasets"]] if isinstance(data["datasets"], str) else data["datasets"]
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise ValueError(f"{path}: 'datasets' must be a dataset name or a list of them")
    seeds = data["seeds"]
    if isinstance(seeds, (str, int)) and not isinstance(seeds, bool):
        seeds = parse_seeds(str(seeds), f"{path}: 'seeds'")
    elif not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise ValueError(f"{path}: 'seeds' must be a range such as 0-4 or a list of integers")
    variants = data.get("variants", ["opt"])
    if isinstance(variants, list):
        variants = variant_overrides(variants)
    elif not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ValueError(f"{path}: 'variants' must be a list of variant names or a mapping name -> overrides")
    grid = {}
    for key in ("n_tau", "n_pretrain"):
        values = data.get(key)
        if values is not None and (not isinstance(values, list) or not all(type(v) is int for v in values)):
            raise ValueError(f"{path}: {key!r} must be a list of integers")
        grid[key] = values
    base = check_overrides(data.get("base") or {}, f"{path}: base")
    if isinstance(base.get("dataset"), str):
        base["dataset"] = os.path.abspath(path.parent / base["dataset"])
    return AblationSpec(datasets=datasets, seeds=seeds, variants=variants, budget=data.get("budget", "quick"),
                        base=base, **grid)


# ------------------------------------------------------------------------------------------ planning
def plan(configs: list[Config], data_digests: dict[DataKey, str | None]) -> list[Group]:
    """Group the distinct configs by offline phase (its fields and its data: ``data_digests`` from
    :func:`ensure_datasets`); each group's lead is its OPT run with the largest N_tau and stores its collection at
    the N_tau of every other run of the group with the same collection settings. Within a group, OPT runs that
    differ only after Q_on's pre-training or in N_pretrain form a nested group whose lead, the run with the largest
    N_pretrain, pre-trains first and stores its state at every other run's N_pretrain."""
    distinct = {config.digest(): config for config in configs}
    groups: dict[tuple[str, str | None], list[Config]] = {}
    for config in distinct.values():
        groups.setdefault((config.digest(OFFLINE_FIELDS), data_digests[data_key(config)]), []).append(config)
    planned = []
    for (_, data_digest), members in groups.items():
        with_opt = [c for c in members if c.opt]
        lead = max(with_opt, key=lambda c: c.n_tau) if with_opt else members[0]
        shared = lead.digest(COLLECT_FIELDS)
        # Every other run's N_tau, the lead's own included (its twins with other pre-training settings branch there).
        steps = sorted({c.n_tau for c in with_opt
                        if c.n_tau > 0 and c is not lead and c.digest(COLLECT_FIELDS) == shared})
        planned.append(Group(Task(lead, data_digest, "pretrain", tuple(steps)),
                             tuple(_pretrain_groups(members, data_digest))))
    return planned


def _pretrain_groups(members: list[Config], data_digest: str | None) -> list[Task | Group]:
    """The runs of one offline group, those sharing Q_on's pre-training (``PRETRAIN_FIELDS``) nested under the one
    with the largest N_pretrain."""
    families: dict[str, list[Config]] = {}
    for config in members:
        shares = config.opt and config.n_pretrain > 0
        families.setdefault(config.digest(PRETRAIN_FIELDS) if shares else config.digest(), []).append(config)
    items: list[Task | Group] = []
    for family in families.values():
        if len(family) == 1:
            items.append(Task(family[0], data_digest))
            continue
        lead = max(family, key=lambda c: c.n_pretrain)
        steps = tuple(sorted({c.n_pretrain for c in family if c is not lead}))
        items.append(Group(Task(lead, data_digest, "finetune", pretrain_snapshots=steps),
                           tuple(Task(c, data_digest) for c in family)))
    return items


def describe_plan(groups: list[Group], out: Path) -> str:
    """What a sweep runs and shares, one line per run (``--dry-run``)."""
    def where(task: Task) -> Path | str:
        if task.data_digest is None:
            return "(its directory is named once its data is made, when the sweep runs)"
        return run_dir_for(out, task.config, task.data_digest)

    lines = [f"{sum(len(g.tasks()) for g in groups)} run(s) in {len(groups)} group(s) sharing an offline phase"]

    def add(items: tuple[Task | Group, ...], indent: str) -> None:
        for item in items:
            if isinstance(item, Group):
                lead = item.prepare
                steps = ", ".join(map(str, lead.pretrain_snapshots))
                lines.append(f"{indent}pre-training by {describe(lead.config)}, seed {lead.config.seed}, stored at "
                             f"steps {steps}:")
                add(item.runs, indent + "  ")
            else:
                lines.append(f"{indent}{describe(item.config)}, seed {item.config.seed}: {where(item)}")

    for group in groups:
        lead = group.prepare
        stored = f"; its collection stored at env steps {', '.join(map(str, lead.snapshots))}" if lead.snapshots else ""
        leader = f"{describe(lead.config)}, seed {lead.config.seed}"
        lines.append(f"group (offline phase and collection by {leader}{stored}):")
        add(group.runs, "  ")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ one task
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock held while the block runs, released by the OS if the process dies."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_task(task: Task, out: str, threads: int = 0) -> dict[str, Any]:
    """Run one task in ``out``; returns the run's summary (or, for a task that stops early, where it stopped).

    ``threads`` > 0 sets PyTorch's threads (the pool gives each of its workers a share of the cores).
    """
    from opt_fast.pipeline import open_run

    if threads > 0 and task.config.torch_threads == 0:
        import torch

        torch.set_num_threads(threads)
    run_dir = _run_dir(Path(out), task)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir / ".lock"):
        if (run_dir / "summary.json").exists():
            return read_json(run_dir / "summary.json")
        dataset = load_training_data(task.config)
        assert task.data_digest is not None  # a task that runs was planned with its data on disk
        if dataset.content_digest != task.data_digest:
            raise ValueError(f"{dataset.path} changed since the sweep was planned (its content digest is "
                             f"{dataset.content_digest[:12]}, planned {task.data_digest[:12]}); run the sweep again")
        trainer = open_run(task.config, run_dir, dataset, resume=True, cache_dir=phase_cache_dir(run_dir),
                           collect_snapshots=task.snapshots, pretrain_snapshots=task.pretrain_snapshots)
        if task.stop == "done":
            return trainer.run()[0]
        trainer.run_until(task.stop)
        return {"run_dir": str(run_dir), "phase": trainer.progress.phase}


# ------------------------------------------------------------------------------------------ executors
Submit = Callable[[Task], Hashable]


def _drive(groups: list[Group], out: Path, submit: Submit, wait_any: Callable[[list[Hashable]], list[Hashable]],
           result: Callable[[Hashable], dict[str, Any]], lost: tuple[type[BaseException], ...]) -> dict[str, Any]:
    """Submit every group's prepare task, then its runs once it is done; returns each run directory's summary, in
    the order of the plan.

    Exceptions of the ``lost`` types (a dead worker) propagate; any other failure is collected and raised at the end
    as :class:`SweepError`, after the other runs finished.
    """
    pending: dict[Hashable, Group | Task] = {submit(group.prepare): group for group in groups}
    summaries: dict[str, Any] = {}
    failures: list[str] = []
    total = sum(len(group.tasks()) for group in groups)
    while pending:
        for handle in wait_any(list(pending)):
            item = pending.pop(handle)
            task = item.prepare if isinstance(item, Group) else item
            try:
                value = result(handle)
            except lost:
                raise
            except Exception as err:  # any failure of one run: reported with its run directory at the end
                unstarted = f" ({len(item.tasks())} run(s) of its group not started)" if isinstance(item, Group) else ""
                failures.append(f"{_run_dir(out, task)}: {type(err).__name__}: {err}{unstarted}")
                continue
            if isinstance(item, Group):
                for run in item.runs:
                    pending[submit(run.prepare if isinstance(run, Group) else run)] = run
            else:
                summaries[str(_run_dir(out, task))] = value
                print(f"[{len(summaries)}/{total}] {_run_dir(out, task)}: final score "
                      f"{value.get('final_score')}", file=sys.stderr)
    if failures:
        raise SweepError(f"{len(failures)} task(s) failed (finished runs are kept; rerun to retry):\n  "
                         + "\n  ".join(failures))
    order = [str(_run_dir(out, run)) for group in groups for run in group.tasks()]
    return {run_dir: summaries[run_dir] for run_dir in order}


def _run_dir(out: Path, task: Task) -> Path:

    assert task.data_digest is not None, "a sweep that runs has made its data"
    return run_dir_for(out, task.config, task.data_digest)


def run_inline(groups: list[Group], out: Path) -> dict[str, Any]:
    """Run in this process, one task after the other (``--workers 1``)."""
    outcomes: list[tuple[dict[str, Any] | None, Exception | None]] = []

    def submit(task: Task) -> int:
        try:
            outcomes.append((run_task(task, str(out)), None))
        except Exception as err:  # raised again by result(), where _drive collects failures
            outcomes.append((None, err))
        return len(outcomes) - 1

    def result(handle: Hashable) -> dict[str, Any]:
        assert isinstance(handle, int)
        value, error = outcomes[handle]
        if error is not None:
            raise error
        assert value is not None
        return value

    return _drive(groups, out, submit, lambda handles: handles, result, lost=())


def _quiet_worker() -> None:
    os.environ["OPT_FAST_PROGRESS"] = "0"  # many runs at once: one line per finished run instead of progress bars


def run_local(groups: list[Group], out: Path, workers: int, retries: int = 2) -> dict[str, Any]:
    """Run on a pool of ``workers`` processes, each with an equal share of the cores. A pool that loses a worker
    is replaced and the plan driven again (finished runs return at once, interrupted ones resume)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch's thread pools
    attempt = 0
    while True:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker) as pool:
            try:
                return _drive(groups, out, lambda task: pool.submit(run_task, task, str(out), threads),
                              _wait_futures, _future_result, lost=(BrokenProcessPool,))
            except BrokenProcessPool:
                attempt += 1
                if attempt > retries:
                    raise
                print("a worker process died; restarting the pool, interrupted runs resume", file=sys.stderr)


def _wait_futures(handles: list[Hashable]) -> list[Hashable]:
    done, _ = wait(handles, return_when=FIRST_COMPLETED)  # type: ignore[arg-type]
    return list(done)


def _future_result(handle: Hashable) -> dict[str, Any]:
    assert isinstance(handle, Future)
    return handle.result()


def run_ray(groups: list[Group], out: Path, address: str, retries: int = 3) -> dict[str, Any]:
    """Run on the Ray cluster at ``address`` (as ``ray.init`` takes it: ``HOST:PORT`` of the head from a node of
    the cluster, ``ray://HOST:10001`` from elsewhere, ``auto``), one CPU and one thread per run. Ray retries the task
    of a lost worker up to ``retries`` times; the retry resumes the run from its checkpoint."""
    import ray

    forwarded = {k: v for k, v in os.environ.items() if k.startswith("OPT_FAST_") or k == "D4RL_DATASET_DIR"}
    ray.init(address=address, runtime_env={"env_vars": {"OPT_FAST_PROGRESS": "0", **forwarded}},
             log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=retries)(run_task)
        return _drive(groups, out, lambda task: remote.remote(task, str(out), 1),
                      lambda handles: ray.wait(handles, num_returns=1)[0],
                      ray.get, lost=())  # type: ignore[arg-type]  # ray.get's overloads take the ObjectRefs it gets
    finally:
        ray.shutdown()


DataKey = tuple[str, str | None, str, str]


def data_key(config: Config) -> DataKey:
    """What decides a run's data (``opt_fast.runs.load_training_data``): env, dataset path, env version, budget."""
    return config.env, config.dataset, config.env_version, config.budget


def ensure_datasets(configs: list[Config], generate: bool = True) -> dict[DataKey, str | None]:
    """Load (generating where missing) every dataset once here, before runs on many workers would race to; each
    one's content digest. Without ``generate`` (a dry run), data not on disk has the digest None."""

    digests: dict[DataKey, str | None] = {}
    for config in configs:
        key = data_key(config)
        if key not in digests:
            try:
                digests[key] = load_training_data(config, generate=generate).content_digest
            except FileNotFoundError:
                if generate:
                    raise
                digests[key] = None
    return digests


def run_sweep(configs: list[Config], out: Path, workers: int | None = None,
              ray_address: str | None = None) -> dict[str, Any]:
    """Run every config (each once, however often it is listed) with the reuse described in the module notes;
    returns each run directory's summary. ``workers`` defaults to the number of cores (1: in this process);
    ``ray_address`` sends the runs to a Ray cluster instead."""
    out = Path(out).resolve()  # workers may start elsewhere
    groups = plan(configs, ensure_datasets(configs))
    if ray_address is not None:
        return run_ray(groups, out, ray_address)
    workers = workers or os.cpu_count() or 1
    return run_inline(groups, out) if workers == 1 else run_local(groups, out, workers)
