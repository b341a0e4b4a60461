"""The trainer's records: evaluations and training records in every seed's ``metrics.jsonl`` (and the ``--log``
sinks), the summary, the wall-clock count and the progress bars (:mod:`opt_fast.metrics` has the records' format)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from tqdm import tqdm

from opt_fast import runtime
from opt_fast.config import first_update_step, kappa, offline_phase_steps, online_discount
from opt_fast.envs.seed_envs import GymSeedEnvs
from opt_fast.evaluation import evaluate, evaluate_seed_batch, summarize
from opt_fast.io import append_jsonl
from opt_fast.metrics import run_step
from opt_fast.progress import PlainProgress, format_seconds, progress_bar
from opt_fast.provenance import code_version, env_package_versions, machine_description
from opt_fast.pipeline.state import SeedRun, TrainerBase


class Records(TrainerBase):
    """Evaluation and training records, summaries and progress bars of a trainer."""

    _window: tuple[float, int, int]  # (wall seconds, env steps, updates) at the last training record
    sink_names: tuple[str, ...]
    sinks: list[list[Any]]  # each seed's, open while phases run
    _postfix: dict[str, str]  # the progress bar's: last score, the whole run's ETA

    def _purge_step(self) -> int | None:
        """Where a resumed run's sinks drop what its killed process wrote after the checkpoint; None when fresh."""
        p = self.progress
        return None if p.n_metrics == 0 else run_step(asdict(p)) + 1

    def wall_seconds(self) -> float:
        """The run's wall-clock seconds so far, summed over every process that ran it."""
        self._count_time()
        return sum(self.progress.phase_seconds.values())

    def _counters(self) -> tuple[float, int, int]:
        """(wall seconds, env steps, updates) so far."""
        p = self.progress
        return self.wall_seconds(), p.online_step, p.offline_step + p.pretrain_step + p.update_step

    def _append(self, run: SeedRun, record: dict[str, Any], row: int) -> None:
        """One record in a seed's metrics.jsonl (and its sinks)."""
        append_jsonl(run.metrics_path, record)
        run.progress.n_metrics += 1
        for sink in self.sinks[row] if self.sinks else ():
            sink.write(record)

    def _log_training(self, bar: tqdm | PlainProgress | None = None) -> None:
        """Every seed's training record: the mean of each update info since the last one, the schedules' values
        now, throughput over the window and the wall-clock seconds so far (opt_fast.metrics)."""
        cfg, p = self.config, self.progress
        (since, env_from, updates_from), (wall, env_steps, updates) = self._window, self._counters()
        seconds = max(wall - since, 1e-9)
        rates = {"env_steps_per_second": (env_steps - env_from) / seconds,
                 "updates_per_second": (updates - updates_from) / seconds}
        for row, (run, means) in enumerate(zip(self.runs, self.window_stats.means())):
            schedules: dict[str, float] = {}
            if p.phase == "finetune":
                if cfg.opt:
                    schedules["kappa"] = kappa(run.config, p.online_step)
                if cfg.backbone == "spot":  # SPOT's cooled density weight (docs/method.md §3.3)
                    schedules["spot_lambda"] = cfg.spot_lambda * max(cfg.spot_lambda_end,
                                                                     1.0 - p.online_step / cfg.online_steps)
            record = {"phase": p.phase, **{key: getattr(run.progress, key) for key in
                                           ("offline_step", "online_step", "pretrain_step", "update_step")},
                      **means, **schedules, **rates, "wall_seconds": wall}
            self._append(run, record, row)
        self._window = (wall, env_steps, updates)
        if bar is not None:
            self._postfix["run_eta"] = format_seconds(self._run_eta(wall))
            bar.set_postfix(self._postfix)

    def _run_eta(self, wall: float) -> float:
        """Seconds the whole run still needs at the pace so far, counting an update and an env step alike."""
        cfg, p = self.config, self.progress
        finetune_updates = cfg.utd * max(cfg.online_steps - first_update_step(cfg), 0)
        total = offline_phase_steps(cfg) + cfg.online_steps + finetune_updates + (cfg.n_pretrain if cfg.opt else 0)
        done = p.offline_step + p.online_step + p.pretrain_step + p.update_step
        return wall * max(total - done, 0) / max(done, 1)

    def _evaluate(self, phase: str) -> list[dict[str, Any]]:
        """Evaluate every seed's deterministic policy; appends and returns each seed's metrics record."""
        cfg = self.config
        gamma = cfg.gamma if phase == "offline" else online_discount(cfg)
        seeds = [run.config.seed for run in self.runs]
        if isinstance(self.eval_envs, GymSeedEnvs):
            results = [evaluate(self.agent.seed_policy(i), env, cfg.eval_episodes, seed, self.agent.seed_critics(i),
                                gamma, self.device) for i, (env, seed) in enumerate(zip(self.eval_envs.envs, seeds))]
        else:
            rollouts = evaluate_seed_batch(self.agent.backbone.act, self.eval_envs, seeds, cfg.eval_episodes,
                                           self.device)
            results = [summarize(episodes, self.agent.seed_critics(i), gamma, self.device)
                       for i, episodes in enumerate(rollouts)]
        ref_min, ref_max = self.ref_scores
        records = []
        for row, (run, result) in enumerate(zip(self.runs, results)):
            p = run.progress
            record = {
                "phase": phase, "offline_step": p.offline_step, "online_step": p.online_step,
                "pretrain_step": p.pretrain_step, "update_step": p.update_step,
                "kappa": kappa(run.config, p.online_step) if cfg.opt and phase == "finetune" else None,
                # D4RL's normalised score; AntMaze returns are successes (reference 0 and 1): 100 x success rate.
                "score": 100.0 * (result["return_mean"] - ref_min) / (ref_max - ref_min),
                **result,
                "wall_seconds": self.wall_seconds(),
            }
            self._append(run, record, row)
            records.append(record)
        return records

    def _bar(self, phase: str, initial: int, total: int) -> tqdm | PlainProgress:
        seeds = f" x{len(self.runs)} seeds" if len(self.runs) > 1 else ""
        return progress_bar(f"{self.dataset_label()}{seeds} {phase}", total, initial)

    def dataset_label(self) -> str:
        if self.dataset.name is not None:
            name = self.dataset.name.d4rl_id
        else:
            name = self.dataset.metadata.get("dataset_id", self.dataset.path.name)
        return f"{name} ({self.dataset.source})"

    def summary(self, run: SeedRun) -> dict[str, Any]:
        p = run.progress
        return {
            "dataset": self.dataset_label(),
            "data_source": self.dataset.source,
            "variant": self.config.backbone.upper() + ("+OPT" if self.config.opt else ""),
            "reference_scores": list(self.ref_scores),
            "dataset_path": str(self.dataset.path),
            "data_digest": self.dataset.content_digest,
            "dataset_metadata": {key: value for key, value in self.dataset.metadata.items()
                                 if isinstance(value, (str, int, float, bool))},
            "env_packages": env_package_versions(self.family),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_fast_path": runtime.describe(),
            "compile": self.compile_mode,
            "code": code_version(),
            "machine": machine_description(),
            "seed": run.config.seed,
            # phase_seconds is the whole batch's wall time: each seed's share is it divided by the batch size.
            "seed_batch": list(run.config.seed_batch) or [run.config.seed],
            "budget": self.config.budget,
            "final_score": p.phase_scores.get("finetune"),
            "phase_scores": p.phase_scores,
            "phase_seconds": p.phase_seconds,
            "wall_seconds": sum(p.phase_seconds.values()),
            "online_steps": p.online_step,
            "updates": p.update_step,
        }
