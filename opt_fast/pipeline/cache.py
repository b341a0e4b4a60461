"""The phase caches a run shares with others (docs/method.md §2; keys: the config fields that determine a phase and
the data's content digest): the offline phase's end, the collection's prefix of a longer N_tau, and the state of a
longer pre-training of Q_on at this run's N_pretrain."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from opt_fast.config import COLLECT_FIELDS, OFFLINE_FIELDS, PRETRAIN_FIELDS
from opt_fast.io import append_jsonl, load_torch, read_jsonl, save_torch
from opt_fast.pipeline.checkpoints import Checkpoints
from opt_fast.pipeline.state import Progress, SeedRun


class PhaseCache(Checkpoints):
    """Storing and taking over cached phase states."""

    def _cache_path(self, run: SeedRun, phase: str, step: int | None = None) -> Path | None:
        """Where the state of ``run`` at the end of the offline phase, or at ``step`` of the collection or of the
        pre-training, is cached: keyed by the config fields that determine it and by the content of the data it
        trains on."""
        if self.cache_dir is None:
            return None
        data = self.dataset.content_digest[:12]
        if phase == "offline":
            return self.cache_dir / f"offline-{run.config.digest(OFFLINE_FIELDS)}-{data}.pt"
        fields = {"collect": COLLECT_FIELDS, "pretrain": PRETRAIN_FIELDS}[phase]
        return self.cache_dir / f"{phase}-{run.config.digest(fields)}-{data}-{step}.pt"

    def _cached(self, phase: str, step: int | None = None) -> list[dict[str, Any]] | None:
        """Every seed's cached state (see :meth:`_cache_path`), or None unless all have one."""
        paths = [self._cache_path(run, phase, step) for run in self.runs]
        if any(path is None or not path.exists() for path in paths):
            return None
        return [load_torch(path) for path in paths if path is not None]  # all are, and exist

    def _store_offline_cache(self) -> None:
        """The offline phase's end state, shared by every run (OPT or baseline) with the same offline config."""
        self._store_states("offline")

    def _store_states(self, phase: str, step: int | None = None) -> None:
        """Every seed's whole state and metrics so far, in the cache of ``phase`` (at ``step``) unless there."""
        for run, state in zip(self.runs, self._seed_states()):
            path = self._cache_path(run, phase, step)
            if path is not None and not path.exists():
                save_torch(path, {"state": state, "metrics": read_jsonl(run.metrics_path)[: run.progress.n_metrics]})

    def try_offline_cache(self) -> bool:
        """Start from a cached offline phase if every seed has one; returns whether it did."""
        cached = self._cached("offline")
        if cached is None:
            return False
        states = [entry["state"] for entry in cached]
        # The cached run may have had OPT on or off: only the backbone and the offline buffer carry over; the
        # RNG states carry over too, so the result equals a run that did its own offline phase.
        self.agent.load_backbone_seed_states([state["agent"] for state in states])
        for run, entry in zip(self.runs, cached):
            state = entry["state"]
            run.load_buffer_states({"offline": state["buffers"]["offline"]})
            run.rng.bit_generator.state = state["rng"]["numpy"]
            run.progress = Progress(**state["progress"])
            run.progress.phase = self._next_phase("offline")
            for record in entry["metrics"]:
                append_jsonl(run.metrics_path, record)
            run.progress.n_metrics = len(entry["metrics"])
        torch.set_rng_state(states[0]["rng"]["torch"])
        if self.progress.phase == "finetune":
            self.agent.start_finetuning()
        self.save_checkpoint(phase_end="offline")
        return True

    def _store_collect_snapshot(self) -> None:
        """The collection's state after ``online_step`` env steps. The policy is frozen and nothing is trained while
        collecting, so only the buffers, RNGs, env, progress and metrics so far change; Q_on and the density net are
        still at their seeded initial values, which a branching run has already."""
        for row, run in enumerate(self.runs):
            path = self._cache_path(run, "collect", run.progress.online_step)
            if path is None or path.exists():
                continue
            state = {
                "progress": asdict(run.progress),
                "buffers": run.buffer_states(("online", "balanced")),
                "rng": {"torch": torch.get_rng_state(), "numpy": run.rng.bit_generator.state},
                "env": None if run.obs is None else self.envs.state_dict(row),
                "obs": run.obs,
            }
            save_torch(path, {"state": state, "metrics": read_jsonl(run.metrics_path)[: run.progress.n_metrics]})

    def try_collect_cache(self) -> bool:
        """Before collecting, take the first N_tau steps of a longer collection of the same seeds if one stored
        them; returns whether it did. The run then continues exactly as if it had collected them itself."""
        p = self.progress
        if p.phase != "collect" or p.online_step != 0:
            return False
        cached = self._cached("collect", self.config.n_tau)
        if cached is None:
            return False
        for row, (run, entry) in enumerate(zip(self.runs, cached)):
            state = entry["state"]
            run.load_buffer_states(state["buffers"])
            run.rng.bit_generator.state = state["rng"]["numpy"]
            run.obs = state["obs"]
            if state["env"] is not None:
                self.envs.load_state_dict(row, state["env"])
            # Both share the records up to the end of the offline phase; append the collection's.
            for record in entry["metrics"][run.progress.n_metrics:]:
                append_jsonl(run.metrics_path, record)
            run.progress = Progress(**state["progress"])
        torch.set_rng_state(cached[0]["state"]["rng"]["torch"])
        self.save_checkpoint()
        return True

    def _store_pretrain_snapshot(self) -> None:
        """The whole run's state after ``pretrain_step`` updates of Q_on: a run with that N_pretrain is, at the end
        of its pre-training, exactly here (nothing within the phase evaluates or draws outside its updates)."""
        self._store_states("pretrain", self.progress.pretrain_step)

    def try_pretrain_cache(self) -> bool:
        """Before pre-training Q_on, take the state of a longer pre-training of the same seeds at this run's
        N_pretrain if one stored it; returns whether it did. The run then ends its pre-training as if it had done
        those updates itself."""
        p, n_pretrain = self.progress, self.config.n_pretrain
        if p.phase != "pretrain" or p.pretrain_step != 0 or n_pretrain == 0:
            return False
        cached = self._cached("pretrain", n_pretrain)
        if cached is None:
            return False
        # Both hold the same records up to the end of the collection; append the pre-training's training records.
        for run, entry in zip(self.runs, cached):
            for record in entry["metrics"][run.progress.n_metrics:]:
                append_jsonl(run.metrics_path, record)
        self.load_states([entry["state"] for entry in cached])
        self.save_checkpoint()
        return True
