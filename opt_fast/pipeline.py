"""The four phases of OPT (OPT.md §2) over one run directory, or over several seeds' directories trained together as a
seed batch, resumable from any checkpoint.

    offline   TD3+BC (or SPOT, after its behaviour VAE) on D_off  (offline_steps gradient steps)
    collect   frozen offline policy + N(0, 0.1) noise, no updates (n_tau env steps; OPT only)
    pretrain  meta-adaptation updates of a new critic Q_on        (n_pretrain updates; OPT only)
    finetune  balanced replay, TD on Q_off (and Q_on), kappa-mixed actor, UTD updates per env step

A run directory holds ``config.json``, ``metrics.jsonl`` (one record per evaluation), ``checkpoints/`` (``latest.pt``
every ``checkpoint_every`` steps and ``<phase>.pt``, a hard link to it, at every phase end; ``latest.pt.next``,
``.<phase>.pt.link`` and, in the first seed's directory, ``commit.json`` exist only while a checkpoint is being
committed) and, when done, ``summary.json``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from time import perf_counter
from typing import Any

import gymnasium
import mujoco
import numpy as np
import torch
from tqdm import tqdm

from opt_fast import antmaze, envs, runtime
from opt_fast.agents.opt import OPTAgent
from opt_fast.agents.td3 import Batch
from opt_fast.config import (COLLECT_FIELDS, OFFLINE_FIELDS, PHASES, PRETRAIN_FIELDS, Config, config_differences,
                             kappa, offline_phase_steps, online_discount)
from opt_fast.data.d4rl import OfflineDataset, check_env_compatible
from opt_fast.data.names import ADROIT_FAMILIES, ANTMAZE_FAMILY, parse_task
from opt_fast.data.scores import reference_scores
from opt_fast.evaluation import episode_seed, evaluate, evaluate_seed_batch, summarize
from opt_fast.io import append_jsonl, load_torch, read_json, read_jsonl, save_torch, truncate_jsonl, write_json
from opt_fast.networks import use_critic_backend
from opt_fast.progress import PlainProgress, progress_bar
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


class SeedRun:
    """One seed's part of a run: its directory, metrics, checkpoints, numpy RNG, buffers and progress. A run of its
    own is a batch of one of these."""

    def __init__(self, config: Config, run_dir: Path, offline_rows: tuple[np.ndarray, ...], obs_dim: int,
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


class Trainer:
    """The phases of one run, or of several seeds trained in lockstep as a batch dimension (``--seeds``): one
    batched network call per update for every seed's networks, one step of every seed's online env per env step,
    while each seed keeps its own buffers, numpy RNG, envs, metrics and checkpoints (:class:`SeedRun`).

    ``configs`` differ only in the seed (and list the batch's seeds in ``seed_batch``); a run of its own is a
    batch of one.
    """

    def __init__(self, configs: Sequence[Config], run_dirs: Sequence[Path], dataset: OfflineDataset,
                 cache_dir: Path | None = None, collect_snapshots: Collection[int] = (),
                 pretrain_snapshots: Collection[int] = ()):
        configs = list(configs)
        check_seed_batch(configs)
        if len(run_dirs) != len(configs):
            raise ValueError(f"{len(configs)} seeds need {len(configs)} run directories, got {len(run_dirs)}")
        self.config = config = configs[0]
        # Env steps at which the collection phase stores its state in ``cache_dir``, for runs with a smaller N_tau
        # to branch from (an ablation over N_tau); a normal run stores none.
        self.collect_snapshots = frozenset(collect_snapshots)
        # Pre-training steps at which Q_on's pre-training stores the run's state, for runs with that N_pretrain to
        # start from (an ablation over N_pretrain).
        self.pretrain_snapshots = frozenset(pretrain_snapshots)
        self.dataset = dataset
        # The env (and score table) follow --env; a dataset given by path may carry no name of its own.
        task = parse_task(config.env)
        self.family = task.family
        # AntMaze has one env per maze (antmaze-umaze...), every other family one env.
        env_name = antmaze.env_key(task.kind) if self.family == ANTMAZE_FAMILY else self.family
        meta = dataset.metadata
        # Minari datasets may carry their own reference returns (the Minari loader prints which pair it chose).
        self.ref_scores = ((float(meta["ref_min_score"]), float(meta["ref_max_score"]))
                           if "ref_min_score" in meta and "ref_max_score" in meta else reference_scores(self.family))
        if self.family == ANTMAZE_FAMILY and dataset.source == "d4rl":
            print(f"warning: {dataset.path} is D4RL AntMaze data, whose maze is the mirror image of "
                  "gymnasium-robotics' (see opt_fast.antmaze): the online env does not match it; use Minari's "
                  "D4RL/antmaze data or `opt-fast data generate`", file=sys.stderr)
        self.cache_dir = cache_dir
        self.device = checked_device(config.device)
        runtime.configure()
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)

        self.envs = make_seed_envs(env_name, configs)
        obs_dim, act_dim = envs.env_dims(env_name, config.env_version)
        check_env_compatible(dataset, obs_dim, act_dim)

        use_critic_backend(config.critic_backend, self.device)
        # Each seed's networks start as a one-seed agent's built after torch.manual_seed(seed).
        self.agent = OPTAgent(obs_dim, act_dim, config, seeds=[c.seed for c in configs])
        compiled, self.compile_mode = runtime.compile_choice(config.compile, self.device)
        if compiled:
            self.agent.compile()
        elif config.compile:
            print(f"opt-fast: {self.compile_mode}; OPT_FAST_COMPILE_ON_CPU=1 compiles anyway", file=sys.stderr)
        # The updates' noise (target smoothing, VAE latents) comes from torch's global generator, seeded after the
        # networks: a one-seed run's offline phase is then the same with OPT on and off (the offline cache).
        torch.manual_seed(config.seed)
        offline = (dataset.observations, dataset.actions, self._train_reward(dataset.rewards),
                   dataset.next_observations, dataset.terminals.astype(np.float32))
        self.runs = [SeedRun(c, d, offline, obs_dim, act_dim) for c, d in zip(configs, run_dirs)]
        # Evaluation: one gymnasium env per seed, or every seed's episodes in one MJX batch.
        self.eval_envs = make_eval_envs(env_name, configs)
        self._clock: float | None = None  # perf_counter() at the last count of phase time (_count_time)

    @property
    def progress(self) -> Progress:
        """Where the run is: the seeds step together, so the first seed's progress is every seed's."""
        return self.runs[0].progress

    def _advance(self, counter: str) -> None:
        for run in self.runs:
            setattr(run.progress, counter, getattr(run.progress, counter) + 1)

    # ------------------------------------------------------------------------------------------ driving
    def run(self, after: str | None = None) -> list[dict[str, Any]]:
        """Run (or continue) every remaining phase, or those up to the end of phase ``after``; returns each seed's
        summary, written to ``summary.json`` when the run is done, else to ``summary-<after>.json``."""
        self.run_until("done" if after is None else PHASES[PHASES.index(after) + 1])
        name = "summary.json" if self.progress.phase == "done" else f"summary-{after}.json"
        summaries = []
        for run in self.runs:
            summary = self.summary(run)
            write_json(run.run_dir / name, summary)
            summaries.append(summary)
        return summaries

    def run_until(self, stop: str) -> None:
        """Run (or continue) the phases that come before phase ``stop`` (a sweep stops a run after its collection so
        that other runs can branch from its caches while it goes on)."""
        if stop not in PHASES:
            raise ValueError(f"unknown phase {stop!r}; phases: {', '.join(PHASES)}")
        phases = {"offline": self._offline, "collect": self._collect, "pretrain": self._pretrain,
                  "finetune": self._finetune}
        self._clock = perf_counter()
        while PHASES.index(self.progress.phase) < PHASES.index(stop):
            phase = self.progress.phase
            phases[phase]()
            self._end_phase(phase)

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

    def _end_phase(self, phase: str) -> None:
        next_phase = self._next_phase(phase)
        records = self._evaluate(phase)
        self._count_time()  # the phase's time includes its final evaluation
        for run, record in zip(self.runs, records):
            run.progress.phase_scores[phase] = record["score"]
            run.progress.phase = next_phase
        if next_phase == "finetune":
            self.agent.start_finetuning()
        self.save_checkpoint(phase_end=phase)
        if phase == "offline":
            self._store_offline_cache()

    # ------------------------------------------------------------------------------------------ phases
    def _offline(self) -> None:
        cfg, p = self.config, self.progress
        total = offline_phase_steps(cfg)
        with self._bar("offline", p.offline_step, total) as bar:
            while p.offline_step < total:
                batch = self._sample_uniform("offline")
                self.agent.backbone.offline_update(batch, p.offline_step)
                self._advance("offline_step")
                bar.update()
                if p.offline_step < total:
                    self._periodic(p.offline_step, bar)

    def _collect(self) -> None:
        cfg, p = self.config, self.progress
        with self._bar("collect", p.online_step, cfg.n_tau) as bar:
            while p.online_step < cfg.n_tau:
                self._env_step()
                bar.update()
                # Stored before this step's evaluation: a run whose N_tau is this step evaluates it as its phase end.
                if p.online_step in self.collect_snapshots:
                    self._store_collect_snapshot()
                if p.online_step < cfg.n_tau:
                    self._periodic(p.online_step, bar)

    def _pretrain(self) -> None:
        cfg, p = self.config, self.progress
        with self._bar("pretrain", p.pretrain_step, cfg.n_pretrain) as bar:
            while p.pretrain_step < cfg.n_pretrain:
                off = self._sample_uniform("offline") if cfg.pretrain_data in ("both", "offline") else None
                on = self._sample_uniform("online") if cfg.pretrain_data in ("both", "online") else None
                self.agent.pretrain_update(off, on, p.pretrain_step)
                self._advance("pretrain_step")
                bar.update()
                if p.pretrain_step in self.pretrain_snapshots:
                    self._store_pretrain_snapshot()
                # The policy is frozen here, so only checkpoints (no evaluations) happen inside the phase.
                if p.pretrain_step % cfg.checkpoint_every == 0 and p.pretrain_step < cfg.n_pretrain:
                    self.save_checkpoint()

    def _finetune(self) -> None:
        cfg, p = self.config, self.progress
        with self._bar("finetune", p.online_step, cfg.online_steps) as bar:
            while p.online_step < cfg.online_steps:
                self._env_step()
                # Updates need an online batch for the density-ratio net: the baseline starts once B_on holds one.
                if self.runs[0].online_buffer.size >= cfg.batch_size:
                    for _ in range(cfg.utd):
                        self._finetune_update()
                bar.update()
                if p.online_step < cfg.online_steps:
                    self._periodic(p.online_step, bar)

    def _finetune_update(self) -> None:
        cfg, p = self.config, self.progress
        off = self._sample_uniform("offline")
        on = self._sample_uniform("online")
        indices = [run.balanced.sample_prioritized(cfg.batch_size) for run in self.runs]
        batch = Batch.stack([run.balanced.gather(i) for run, i in zip(self.runs, indices)], self.device)
        kappas = [kappa(run.config, p.online_step) for run in self.runs]
        _, priorities = self.agent.finetune_update(
            off, on, batch, kappas, [p.online_step / cfg.online_steps] * len(self.runs), p.update_step
        )
        priorities = priorities.cpu().numpy().astype(np.float64)
        for run, run_indices, run_priorities in zip(self.runs, indices, priorities):
            run.balanced.update_priorities(run_indices, run_priorities)
        self._advance("update_step")

    # ------------------------------------------------------------------------------------------ pieces
    def _sample_uniform(self, buffer: str) -> Batch:
        """A uniform batch from every seed's offline or online buffer: [S, B, ...]."""
        batches = []
        for run in self.runs:
            source = run.offline_buffer if buffer == "offline" else run.online_buffer
            batches.append(source.gather(source.sample_uniform(self.config.batch_size)))
        return Batch.stack(batches, self.device)

    def _env_step(self) -> None:
        """One env step of every seed with its policy plus N(0, exploration_noise), stored in its B_on and replay."""
        if self.runs[0].obs is None:
            for run, obs in zip(self.runs, self.envs.reset([run.config.seed for run in self.runs])):
                run.obs = obs
        obs = torch.as_tensor(np.stack([run.obs for run in self.runs]), dtype=torch.float32, device=self.device)
        actions = self.agent.backbone.act(obs.unsqueeze(1))[:, 0].cpu().numpy()
        noisy = []
        for run, action in zip(self.runs, actions):
            noise = run.rng.normal(0.0, self.config.exploration_noise, size=action.shape)
            noisy.append(np.clip(action + noise, -1.0, 1.0).astype(np.float32))
        for row, (run, action, (next_obs, reward, terminated, truncated)) in enumerate(
                zip(self.runs, noisy, self.envs.step(np.stack(noisy)))):
            # `done` is a true termination only; a time-limit cut bootstraps (§8).
            transition = (run.obs, action, float(self._train_reward(reward)), next_obs, bool(terminated))
            run.online_buffer.add(*transition)
            run.balanced.add(*transition)
            run.progress.online_step += 1
            run.progress.episode_return += float(reward)
            if terminated or truncated:
                run.progress.episodes += 1
                run.progress.episode_return = 0.0
                run.obs = self.envs.next_episode(row)
            else:
                run.obs = next_obs

    def _train_reward(self, reward):
        """The reward learnt from: AntMaze's 0/1 success under ``antmaze_reward`` (evaluation counts the raw
        success), every other family's unchanged."""
        if self.family == ANTMAZE_FAMILY:
            return antmaze.transform_reward(self.config.antmaze_reward, reward)
        return reward

    def _periodic(self, step: int, bar: tqdm | PlainProgress) -> None:
        if step % self.config.eval_every == 0:
            scores = [record["score"] for record in self._evaluate(self.progress.phase)]
            bar.set_postfix(score=f"{np.mean(scores):.1f}")
        if step % self.config.checkpoint_every == 0:
            self.save_checkpoint()

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
        for run, result in zip(self.runs, results):
            p = run.progress
            record = {
                "phase": phase, "offline_step": p.offline_step, "online_step": p.online_step,
                "pretrain_step": p.pretrain_step, "update_step": p.update_step,
                "kappa": kappa(run.config, p.online_step) if cfg.opt and phase == "finetune" else None,
                # D4RL's normalised score; AntMaze returns are successes (reference 0 and 1): 100 x success rate.
                "score": 100.0 * (result["return_mean"] - ref_min) / (ref_max - ref_min),
                **result,
            }
            append_jsonl(run.metrics_path, record)
            p.n_metrics += 1
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
            "online_steps": p.online_step,
            "updates": p.update_step,
        }

    # ------------------------------------------------------------------------------------------ checkpoints
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

    # ------------------------------------------------------------------------------------------ offline cache
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
        return [load_torch(path) for path in paths]

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

    # ------------------------------------------------------------------------------------------ collection prefix
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

    # ------------------------------------------------------------------------------------------ pre-training prefix
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
        # Both hold the same records, up to the end of the collection: pre-training does not evaluate.
        self.load_states([entry["state"] for entry in cached])
        self.save_checkpoint()
        return True


def checked_device(name: str) -> torch.device:
    """``--device`` as a torch device, refused with a message when this machine has no such device."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; expected cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, {build}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: opt-fast runs on cpu or cuda devices")
    return device


def check_seed_batch(configs: Sequence[Config]) -> None:
    """Seeds trained as a batch must differ only in the seed, name the batch's seeds in ``seed_batch``, and a run of
    its own has none."""
    seeds = [c.seed for c in configs]
    if not configs:
        raise ValueError("a run needs at least one seed")
    if len(configs) == 1:
        if configs[0].seed_batch and tuple(configs[0].seed_batch) != (configs[0].seed,):
            raise ValueError(f"seed {configs[0].seed}'s config names the seed batch {list(configs[0].seed_batch)}; "
                             "train the batch together (--seeds)")
        return
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: every seed once, got {seeds}")
    shared = {json.dumps({**c.to_json(), "seed": None}, sort_keys=True) for c in configs}
    if len(shared) > 1 or tuple(configs[0].seed_batch) != tuple(seeds):
        raise ValueError(f"seeds {seeds} trained as a batch need the same settings but the seed, with "
                         f"seed_batch={seeds}")


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


class GymSeedEnvs:
    """One gymnasium env per seed behind :class:`opt_fast.mjx_envs.MJXSeedEnvs`' interface, stepped in turn."""

    def __init__(self, env_list: Sequence[gymnasium.Env]):
        self.envs = list(env_list)

    def reset(self, seeds: Sequence[int]) -> list[np.ndarray]:
        return [env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds)]

    def next_episode(self, row: int) -> np.ndarray:
        return self.envs[row].reset()[0]

    def step(self, actions: np.ndarray) -> list[tuple[np.ndarray, float, bool, bool]]:
        return [env.step(action)[:4] for env, action in zip(self.envs, actions)]

    def state_dict(self, row: int) -> dict[str, Any]:
        return get_env_state(self.envs[row])

    def load_state_dict(self, row: int, state: dict[str, Any]) -> None:
        set_env_state(self.envs[row], state)


_MUJOCO_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


def _time_limit(env: gymnasium.Env) -> gymnasium.wrappers.TimeLimit:
    wrapper = env
    while not isinstance(wrapper, gymnasium.wrappers.TimeLimit):
        if not hasattr(wrapper, "env"):
            raise TypeError(f"{env} has no TimeLimit wrapper")
        wrapper = wrapper.env
    return wrapper


def make_seed_envs(name: str, configs: Sequence[Config]):
    """The online envs of every seed: one MJX batch (``--env-backend mjx``) or one gymnasium env per seed."""
    config = configs[0]
    if config.env_backend == "mjx":
        return _mjx_envs().MJXSeedEnvs(name, config.env_version, [c.seed for c in configs])
    return GymSeedEnvs([envs.make_env(name, c.env_version, seed=c.seed) for c in configs])


def make_eval_envs(name: str, configs: Sequence[Config]):
    """The evaluation envs: one gymnasium env per seed, or one MJX batch of every seed's evaluation episodes (each
    row reset with the seed its episode has in a gymnasium evaluation)."""
    config = configs[0]
    if config.env_backend == "mjx":
        rows = [episode_seed(c.seed, i) for c in configs for i in range(config.eval_episodes)]
        return _mjx_envs().MJXSeedEnvs(name, config.env_version, rows)
    return GymSeedEnvs([envs.make_env(name, c.env_version, seed=c.seed) for c in configs])


def _mjx_envs():
    try:
        from opt_fast import mjx_envs
    except ImportError as err:
        raise ImportError(f"--env-backend mjx needs mujoco-mjx and jax ({err}): pip install 'opt-fast[mjx]'") from err
    return mjx_envs


def get_env_state(env: gymnasium.Env) -> dict[str, Any]:
    """A mid-episode env's full state: MuJoCo's physics, step count within the episode, and its RNG; plus, for
    envs that have one (Adroit, AntMaze), the task state that ``reset`` draws outside the physics (targets)."""
    sim = env.unwrapped
    physics = np.empty(mujoco.mj_stateSize(sim.model, _MUJOCO_STATE))
    mujoco.mj_getState(sim.model, sim.data, physics, _MUJOCO_STATE)
    return {"physics": physics, "elapsed_steps": _time_limit(env)._elapsed_steps,
            "np_random": sim.np_random.bit_generator.state,
            "task": env.task_state() if hasattr(env, "task_state") else None}


def set_env_state(env: gymnasium.Env, state: dict[str, Any]) -> None:
    env.reset()  # marks the env as reset for gymnasium's order checks; everything is overwritten below
    sim = env.unwrapped
    mujoco.mj_setState(sim.model, sim.data, state["physics"], _MUJOCO_STATE)
    mujoco.mj_forward(sim.model, sim.data)
    _time_limit(env)._elapsed_steps = state["elapsed_steps"]
    sim.np_random.bit_generator.state = state["np_random"]
    if state.get("task") is not None:
        env.set_task_state(state["task"])


def env_package_versions(family: str) -> dict[str, str]:
    """Versions of the packages that define the env's dynamics and rewards, recorded with every result
    (gymnasium-robotics changed Adroit rewards without a version bump)."""
    packages = ["gymnasium", "mujoco"]
    if family in ADROIT_FAMILIES or family == ANTMAZE_FAMILY:
        packages.append("gymnasium-robotics")
    return {package: importlib_metadata.version(package) for package in packages}


def machine_description() -> str:
    """CPU model, core count, memory and OS of this machine (and its GPU, when one is visible)."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        total_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal"))
        memory = f", {total_kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{memory}{gpu}; {platform.system()} {platform.release()}"


def code_version() -> str:
    """opt-fast's version, and the git commit of its source tree when it runs from a checkout (``+dirty`` when the
    tree has uncommitted changes), for every result's provenance."""
    version = importlib_metadata.version("opt-fast")
    source = Path(__file__).resolve().parent.parent
    if not (source / "pyproject.toml").exists():  # an installed copy: any enclosing repository is not its source
        return version
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit}{'+dirty' if dirty else ''})"


def open_run(config: Config, run_dir: Path, dataset: OfflineDataset, resume: bool,
             cache_dir: Path | None = None, collect_snapshots: Collection[int] = (),
             pretrain_snapshots: Collection[int] = ()) -> Trainer:
    """A trainer for one run of its own in ``run_dir``; see :func:`open_seed_batch`."""
    return open_seed_batch([config], [run_dir], dataset, resume, cache_dir, collect_snapshots, pretrain_snapshots)


def open_seed_batch(configs: Sequence[Config], run_dirs: Sequence[Path], dataset: OfflineDataset, resume: bool,
                    cache_dir: Path | None = None, collect_snapshots: Collection[int] = (),
                    pretrain_snapshots: Collection[int] = ()) -> Trainer:
    """A trainer for the seeds ``configs`` (each with its directory in ``run_dirs``): fresh (refusing to overwrite
    another run) or resumed from their last checkpoints.

    With a ``cache_dir``, the seeds start from the cached offline phase, the stored collection prefix and the stored
    pre-training prefix that match their configurations, if every seed has one; ``collect_snapshots`` are the env
    steps at which their own collection stores its state, ``pretrain_snapshots`` the pre-training steps at which
    their own pre-training does.
    """
    run_dirs = [Path(d) for d in run_dirs]
    started = []
    for config, run_dir in zip(configs, run_dirs):
        config_path = run_dir / "config.json"
        if config_path.exists():
            stored = Config.from_json(read_json(config_path))
            if not resume:
                raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                                      "another --out")
            if stored.to_json() != config.to_json():
                raise ValueError(f"--resume: {config_path} differs from the requested configuration in "
                                 + "; ".join(config_differences(stored.to_json(), config.to_json())))
        started.append((run_dir / "checkpoints" / "latest.pt").exists())
        if resume and config_path.exists() and not started[-1]:
            print(f"--resume: {run_dir} has no checkpoint yet; starting it from the beginning", file=sys.stderr)
    trainer = Trainer(configs, run_dirs, dataset, cache_dir, collect_snapshots, pretrain_snapshots)
    if resume and any(started):
        if not all(started):
            raise ValueError(f"--resume: only {[str(d) for d, s in zip(run_dirs, started) if s]} of the seed batch "
                             "have checkpoints; a seed batch resumes only from checkpoints it wrote together")
        trainer.resume()
    else:
        for config, run_dir in zip(configs, run_dirs):
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(err.errno, f"cannot create the run directory {run_dir}: {err.strerror}") from None
            write_json(run_dir / "config.json", config.to_json())
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        trainer.try_offline_cache()
    trainer.try_collect_cache()
    trainer.try_pretrain_cache()
    return trainer
