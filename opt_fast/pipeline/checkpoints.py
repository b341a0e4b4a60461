"""Checkpoints of a trainer and the protocol that commits them: every seed's ``latest.pt`` (and ``<phase>.pt`` at a
phase end) written, then a commit marker, then the renames it lists, so a kill anywhere leaves the old state or the
new one; resuming completes an interrupted commit and falls back to the last intact phase checkpoint."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from opt_fast.config import PHASES, Config
from opt_fast.io import load_torch, read_json, save_torch, truncate_jsonl, write_json
from opt_fast.pipeline.state import Progress, TrainerBase


class Checkpoints(TrainerBase):
    """Saving, committing and resuming a trainer's checkpoints."""

    def _seed_states(self) -> list[dict[str, Any]]:
        """Each seed's checkpoint: a one-seed run's format (the torch generator is the batch's shared one)."""
        return [{
            "config": run.config.to_json(),
            "progress": asdict(run.progress),
            "agent": agent_state,
            "buffers": run.buffer_states(),
            "rng": {"torch": torch.get_rng_state(), "numpy": run.rng.bit_generator.state},
            "env": None if run.obs is None else self.envs.state_dict(row),
            "obs": run.obs,
            "window_stats": self.window_stats.seed_state(row),
        } for row, (run, agent_state) in enumerate(zip(self.runs, self.agent.seed_state_dicts()))]

    def save_checkpoint(self, phase_end: str | None = None) -> None:
        """Every seed's ``latest.pt`` (and ``<phase_end>.pt``), committed together: each seed's new file is written
        first, and only when all are written is the commit marker written, which lists what is due: the renames
        into place and the phase links. An interruption before the marker leaves the old state, one after it the
        new state (the resume completes what the marker lists)."""
        self._count_time()
        states = self._seed_states()
        for run, state in zip(self.runs, states):
            save_torch(run.checkpoint_dir / "latest.pt.next", state)
        marker = self._commit_marker()
        write_json(marker, {"checkpoint_dirs": [str(run.checkpoint_dir) for run in self.runs],
                            "phase_end": phase_end})
        _finish_commit(marker)

    def _commit_marker(self) -> Path:
        return self.runs[0].checkpoint_dir / "commit.json"

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        self.agent.load_seed_state_dicts([state["agent"] for state in states])
        for row, (run, state) in enumerate(zip(self.runs, states)):
            run.progress = Progress(**state["progress"])
            run.load_buffer_states(state["buffers"])
            run.rng.bit_generator.state = state["rng"]["numpy"]
            run.obs = state["obs"]
            if state["env"] is not None:
                self.envs.load_state_dict(row, state["env"])
        torch.set_rng_state(states[0]["rng"]["torch"])
        self.window_stats.load_seed_states([state.get("window_stats") for state in states])

    def resume(self) -> None:
        """Continue from every seed's ``checkpoints/latest.pt`` (or, where one is unreadable, from the last phase
        checkpoint every seed has intact, saying so); metrics written after it are dropped and redone."""
        marker = self._commit_marker()
        if marker.exists():
            _finish_commit(marker)
        for run in self.runs:
            (run.checkpoint_dir / "latest.pt.next").unlink(missing_ok=True)  # a commit that never started
            # Temporary files of writes a kill interrupted: a run directory has one writer, so none is in use.
            for leftover in [*run.run_dir.glob(".*.tmp"), *run.checkpoint_dir.glob(".*.tmp")]:
                leftover.unlink()
        source, states = self._intact_checkpoints()
        for run, state in zip(self.runs, states):
            if Config.from_json(state["config"]).to_json() != run.config.to_json():
                raise ValueError(f"{run.checkpoint_dir / source} was written with another configuration than "
                                 f"{run.run_dir / 'config.json'}")
        steps = {tuple(state["progress"][k] for k in ("phase", "offline_step", "online_step", "pretrain_step"))
                 for state in states}
        if len(steps) > 1:
            raise ValueError(f"the seeds' checkpoints are at different points {sorted(steps)}; a seed batch resumes "
                             "only from checkpoints it wrote together")
        self.load_states(states)
        for run in self.runs:
            truncate_jsonl(run.metrics_path, run.progress.n_metrics)
        p = self.progress
        dirs = ", ".join(str(run.run_dir) for run in self.runs)
        print(f"resuming {dirs} from checkpoints/{source}: phase {p.phase}, offline step {p.offline_step}, "
              f"online step {p.online_step}, pre-training step {p.pretrain_step}", file=sys.stderr)

    def _intact_checkpoints(self) -> tuple[str, list[dict[str, Any]]]:
        """(file name, every seed's state) of ``latest.pt``, else of the latest ``<phase>.pt`` all seeds can read."""
        try:
            return "latest.pt", [load_torch(run.checkpoint_dir / "latest.pt") for run in self.runs]
        except ValueError as err:  # unreadable (cut short, overwritten, empty): load_torch names the file
            unreadable = err
        for phase in reversed(PHASES[:-1]):
            paths = [run.checkpoint_dir / f"{phase}.pt" for run in self.runs]
            if not all(path.exists() for path in paths):
                continue
            try:
                states = [load_torch(path) for path in paths]
            except ValueError:
                continue
            print(f"warning: {unreadable}; resuming from {phase}.pt instead, the end of the {phase} phase",
                  file=sys.stderr)
            return f"{phase}.pt", states
        raise ValueError(f"{unreadable}, and no phase checkpoint is intact to resume from; remove "
                         f"{self.runs[0].run_dir} to start the run again") from None


def _finish_commit(marker: Path) -> None:
    """Do what a commit marker lists, then drop it: rename each directory's ``latest.pt.next`` over ``latest.pt``
    (one already renamed is skipped) and, at a phase end, make ``<phase>.pt`` a link to it. Every step can be
    redone, so a commit interrupted anywhere is completed by running this again."""
    commit = read_json(marker)
    for checkpoint_dir in map(Path, commit["checkpoint_dirs"]):
        latest = checkpoint_dir / "latest.pt"
        pending = checkpoint_dir / "latest.pt.next"
        if pending.exists():
            os.replace(pending, latest)
        if commit["phase_end"] is not None:
            # Linked under a temporary name and renamed over the old link: <phase>.pt is never missing.
            link = checkpoint_dir / f".{commit['phase_end']}.pt.link"
            link.unlink(missing_ok=True)
            os.link(latest, link)
            os.replace(link, checkpoint_dir / f"{commit['phase_end']}.pt")
    marker.unlink()
