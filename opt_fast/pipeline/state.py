"""What a trainer holds, seed by seed and for the whole batch: each seed's progress, buffers, RNG and files
(:class:`SeedRun`), and the state that the trainer's rooms (records, checkpoints, caches, phases) share
(:class:`TrainerBase`)."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch

from opt_fast.agents.opt import OPTAgent
from opt_fast.config import PHASES, Config
from opt_fast.data.d4rl import OfflineDataset
from opt_fast.metrics import WindowStats
from opt_fast.replay import ReplayBuffer


@dataclass
class Progress:
    """Everything that says where a run is; saved in every checkpoint."""

    phase: str = "offline"
    offline_step: int = 0
    online_step: int = 0
    pretrain_step: int = 0
    update_step: int = 0
    n_metrics: int = 0
    episode_return: float = 0.0
    episodes: int = 0
    phase_scores: dict[str, float] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)


Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(observations, actions, rewards, next observations, terminals) of a dataset."""


class SeedRun:
    """One seed's part of a run: its directory, metrics, checkpoints, numpy RNG, buffers and progress. A run of its
    own is a batch of one of these."""

    def __init__(self, config: Config, run_dir: Path, offline_rows: Rows, obs_dim: int,
                 act_dim: int):
        self.config = config
        self.run_dir = Path(run_dir)
        self.rng = np.random.default_rng(config.seed)
        buffer_seeds = np.random.SeedSequence(config.seed).generate_state(3)
        n_off = len(offline_rows[0])
        self.offline_buffer = ReplayBuffer(n_off, obs_dim, act_dim, seed=int(buffer_seeds[0]))
        self.offline_buffer.add_batch(*offline_rows, priority=1.0)
        self.online_buffer = ReplayBuffer(config.online_steps, obs_dim, act_dim, seed=int(buffer_seeds[1]))
        # Balanced replay: every offline row at priority 1, online rows at the running maximum (§3.3).
        capacity = config.replay_ring_capacity if config.replay_ring else n_off + config.online_steps
        self.balanced = ReplayBuffer(capacity, obs_dim, act_dim, seed=int(buffer_seeds[2]), ring=config.replay_ring)
        self.balanced.add_batch(*offline_rows, priority=1.0)
        self.progress = Progress()
        self.obs: np.ndarray | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_dir = self.run_dir / "checkpoints"

    def _buffers(self) -> dict[str, ReplayBuffer]:
        return {"online": self.online_buffer, "balanced": self.balanced, "offline": self.offline_buffer}

    def buffer_states(self, names: Collection[str] = ("online", "balanced", "offline")) -> dict[str, Any]:
        return {name: self._buffers()[name].state_dict() for name in names}

    def load_buffer_states(self, states: dict[str, Any]) -> None:
        for name, state in states.items():
            self._buffers()[name].load_state_dict(state)


class TrainerBase:
    """The state of a :class:`opt_fast.pipeline.trainer.Trainer` that every part of it reads, and the bookkeeping
    they all use: where the run is, and the time each phase took."""

    config: Config
    runs: list[SeedRun]
    agent: OPTAgent
    dataset: OfflineDataset
    family: str
    ref_scores: tuple[float, float]
    device: torch.device
    compile_mode: str  # what ran for --compile (opt_fast.runtime.compile_choice), for the summary
    cache_dir: Path | None
    envs: Any  # GymSeedEnvs or opt_fast.envs.mjx.MJXSeedEnvs
    eval_envs: Any
    window_stats: WindowStats
    _clock: float | None  # perf_counter() at the last count of phase time (_count_time)

    @property
    def progress(self) -> Progress:
        """Where the run is: the seeds step together, so the first seed's progress is every seed's."""
        return self.runs[0].progress

    def _advance(self, counter: str) -> None:
        for run in self.runs:
            setattr(run.progress, counter, getattr(run.progress, counter) + 1)

    def _start_clock(self) -> None:
        """Phase time counts from now (the phases start or continue in this process)."""
        self._clock = perf_counter()

    def _count_time(self) -> None:
        """Add the wall time since the last count to the current phase's ``phase_seconds``. Every checkpoint counts
        first, so a resumed run keeps the time its earlier processes spent in a phase (all but the time since their
        last checkpoint, whose work the resumed run does, and counts, again)."""
        if self._clock is None or self.progress.phase == "done":
            return  # no phase running (a cache being taken over, or the last phase has ended)
        now = perf_counter()
        for run in self.runs:
            phase = run.progress.phase
            run.progress.phase_seconds[phase] = run.progress.phase_seconds.get(phase, 0.0) + now - self._clock
        self._clock = now

    def _next_phase(self, phase: str) -> str:
        if not self.config.opt and phase == "offline":
            return "finetune"  # the TD3 baseline fine-tunes for the whole online budget
        return PHASES[PHASES.index(phase) + 1]
