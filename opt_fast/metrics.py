"""Training you can watch: the agents' per-update info averaged over windows of ``Config.log_every`` steps, with
throughput and the run's wall-clock seconds, as training records in ``metrics.jsonl`` beside the evaluation records;
optionally mirrored to TensorBoard or Weights & Biases (``opt-fast train --log tensorboard,wandb``).

An evaluation record is one with a ``score``; a training record has none. Both carry the phase, the step counters
and ``wall_seconds``: the run's wall-clock time so far, summed over the processes that ran it (a resumed run
continues the count from its checkpoint). The timing keys (:data:`TIMING_KEYS`) are the only values that differ
between an uninterrupted run and one killed and resumed.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opt_fast.io import read_jsonl

TIMING_KEYS = ("wall_seconds", "env_steps_per_second", "updates_per_second")
"""Record keys that measure time, not training: outside every reproducibility check."""

STEP_KEYS = ("offline_step", "online_step", "pretrain_step", "update_step")

SINKS = ("tensorboard", "wandb")
"""What ``--log`` may name besides ``metrics.jsonl`` (which is always written)."""


def is_evaluation(record: Mapping[str, Any]) -> bool:
    return "score" in record


def evaluations(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation records of a ``metrics.jsonl``."""
    return [dict(r) for r in records if is_evaluation(r)]


def without_timing(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records without their timing keys: what two runs of the same configuration agree on bit for bit."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def reproducible_records(path: Path) -> list[dict[str, Any]]:
    """A ``metrics.jsonl`` without its timing keys."""
    return without_timing(read_jsonl(path))


def run_step(record: Mapping[str, Any]) -> int:
    """A step count that grows through every phase (offline, pre-training and env steps added up): the x axis of
    the sinks, which have one step per run."""
    return int(record["offline_step"] + record["pretrain_step"] + record["online_step"])


class WindowStats:
    """Running sums, per seed, of the info the agents return from every update (losses; the priorities' density
    ratio statistics), over the updates since the last training record. Sums stay on the info's device (one add per
    key and update, no synchronisation) until :meth:`means` reads them."""

    def __init__(self, n_seeds: int):
        self.n_seeds = n_seeds
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, info: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        for key, value in info.items():
            value = torch.as_tensor(value).detach().double().reshape(-1)  # [S], one value per seed
            total = self.sums.get(key)
            self.sums[key] = value if total is None else total.to(value.device) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> list[dict[str, float]]:
        """Each seed's mean of every key over the window, then an empty window."""
        means: list[dict[str, float]] = [{} for _ in range(self.n_seeds)]
        for key, total in self.sums.items():
            for seed, value in enumerate((total / self.counts[key]).cpu().tolist()):
                means[seed][key] = value
        self.sums, self.counts = {}, {}
        return means

    def seed_state(self, index: int) -> dict[str, Any]:
        """Seed ``index``'s part of the window, for its checkpoint (a one-seed run's format)."""
        return {"sums": {key: float(total[index]) for key, total in self.sums.items()}, "counts": dict(self.counts)}

    def load_seed_states(self, states: Sequence[dict[str, Any] | None]) -> None:
        """The window of every seed's checkpoint (an empty one from a checkpoint written before training records
        existed)."""
        present = [state for state in states if state is not None]
        if not present:
            self.sums, self.counts = {}, {}
            return
        self.sums = {key: torch.tensor([state["sums"][key] for state in present], dtype=torch.float64)
                     for key in present[0]["sums"]}
        self.counts = dict(present[0]["counts"])


class TensorBoardSink:
    """Every record's numbers as scalars ``eval/<key>``, ``train/<key>`` and ``time/<key>`` in
    ``<run_dir>/tensorboard``, at :func:`run_step`. A resumed run purges what was written after its checkpoint."""

    def __init__(self, run_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # needs tensorboard, which parse_sinks checked

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        group = "eval" if is_evaluation(record) else "train"
        step = run_step(record)
        for key, value in _numbers(record):
            self.writer.add_scalar(f"{'time' if key in TIMING_KEYS else group}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Every record's numbers in an offline Weights & Biases run in ``<run_dir>/wandb`` (``wandb sync`` uploads
    it), one per run directory, continued by a resumed run."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb  # checked by parse_sinks

        run_dir = Path(run_dir)
        self.run = wandb.init(mode="offline", dir=str(run_dir), id=run_dir.name, name=run_dir.name,
                              config=config, resume="allow", reinit="create_new")

    def write(self, record: Mapping[str, Any]) -> None:
        group = "eval" if is_evaluation(record) else "train"
        self.run.log({f"{'time' if key in TIMING_KEYS else group}/{key}": value for key, value in _numbers(record)},
                     step=run_step(record))

    def close(self) -> None:
        self.run.finish()


def _numbers(record: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [(key, float(value)) for key, value in record.items()
            if key not in STEP_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)]


def parse_sinks(text: str | None) -> tuple[str, ...]:
    """``--log tensorboard,wandb`` as sink names, each once; unknown names and sinks whose package is not
    installed are refused before anything runs."""
    names = tuple(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))
    unknown = [name for name in names if name not in SINKS]
    if unknown:
        raise ValueError(f"--log: unknown sink {', '.join(unknown)}; choose from {', '.join(SINKS)}")
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"--log {name} needs the {name} package: pip install {name}")
    return names


def open_sinks(names: Sequence[str], run_dir: Path, config: dict[str, Any], purge_step: int | None) -> list[Any]:
    """The sinks ``names`` of one run directory."""
    makers = {"tensorboard": lambda: TensorBoardSink(run_dir, purge_step), "wandb": lambda: WandbSink(run_dir, config)}
    return [makers[name]() for name in names]

