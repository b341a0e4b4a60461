"""The four phases of OPT (docs/method.md §2) over one run directory, or over several seeds' directories trained
together as a seed batch, resumable from any checkpoint.

    offline   TD3+BC (or SPOT, after its behaviour VAE) on D_off  (offline_steps gradient steps)
    collect   frozen offline policy + N(0, 0.1) noise, no updates (n_tau env steps; OPT only)
    pretrain  meta-adaptation updates of a new critic Q_on        (n_pretrain updates; OPT only)
    finetune  balanced replay, TD on Q_off (and Q_on), kappa-mixed actor, UTD updates per env step

A run directory holds ``config.json``, ``metrics.jsonl`` (evaluation and training records, :mod:`opt_fast.metrics`),
``checkpoints/`` (``latest.pt`` every ``checkpoint_every`` steps and ``<phase>.pt``, a hard link to it, at every
phase end; ``latest.pt.next``, ``.<phase>.pt.link`` and, in the first seed's directory, ``commit.json`` exist only
while a checkpoint is being committed, :mod:`opt_fast.pipeline.checkpoints`) and, when done, ``summary.json``.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from opt_fast import envs, runtime
from opt_fast.agents.common import Batch
from opt_fast.agents.opt import OPTAgent
from opt_fast.config import PHASES, Config, kappa, offline_phase_steps
from opt_fast.data.d4rl import OfflineDataset, check_env_compatible
from opt_fast.data.names import ANTMAZE_FAMILY
from opt_fast.data.scores import reference_scores, transform_reward
from opt_fast.envs.seed_envs import GymSeedEnvs
from opt_fast.evaluation import episode_seed
from opt_fast.io import write_json
from opt_fast.metrics import WindowStats, open_sinks
from opt_fast.pipeline.cache import PhaseCache
from opt_fast.pipeline.records import Records
from opt_fast.pipeline.state import SeedRun
from opt_fast.progress import PlainProgress
from opt_fast.tasks import Task


class Trainer(Records, PhaseCache):
    """The phases of one run, or of several seeds trained in lockstep as a batch dimension (``--seeds``): one
    batched network call per update for every seed's networks, one step of every seed's online env per env step,
    while each seed keeps its own buffers, numpy RNG, envs, metrics and checkpoints (:class:`SeedRun`).

    ``configs`` differ only in the seed (and list the batch's seeds in ``seed_batch``); a run of its own is a
    batch of one.
    """

    def __init__(self, configs: Sequence[Config], run_dirs: Sequence[Path], dataset: OfflineDataset,
                 cache_dir: Path | None = None, collect_snapshots: Collection[int] = (),
                 pretrain_snapshots: Collection[int] = (), sinks: Sequence[str] = ()):
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
        task = config.task
        self.family = task.family
        meta = dataset.metadata
        # Minari datasets may carry their own reference returns (the Minari loader prints which pair it chose).
        self.ref_scores = ((float(meta["ref_min_score"]), float(meta["ref_max_score"]))
                           if "ref_min_score" in meta and "ref_max_score" in meta else reference_scores(self.family))
        if self.family == ANTMAZE_FAMILY and dataset.source == "d4rl":
            print(f"warning: {dataset.path} is D4RL AntMaze data, whose maze is the mirror image of "
                  "gymnasium-robotics' (see opt_fast.envs.antmaze): the online env does not match it; use Minari's "
                  "D4RL/antmaze data or `opt-fast data generate`", file=sys.stderr)
        self.cache_dir = cache_dir
        self.device = checked_device(config.device)
        runtime.configure()
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)

        self.envs = make_seed_envs(task, configs)
        obs_dim, act_dim = envs.env_dims(task.env_name, config.env_version)
        check_env_compatible(dataset, obs_dim, act_dim)

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
        self.eval_envs = make_eval_envs(task, configs)
        self._clock: float | None = None  # perf_counter() at the last count of phase time (_count_time)
        # Training records (opt_fast.metrics): the updates' info since the last one, and where it started
        # (wall seconds, env steps, updates) for the throughput.
        self.window_stats = WindowStats(len(self.runs))
        self._window: tuple[float, int, int] = (0.0, 0, 0)
        self.sink_names = tuple(sinks)
        self.sinks: list[list[Any]] = []  # each seed's, opened when the phases start (a resume purges after it)
        self._postfix: dict[str, str] = {}  # the progress bar's: last score, the whole run's ETA

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
        self._start_clock()
        self._window = self._counters()
        if not self.sinks:
            self.sinks = [open_sinks(self.sink_names, run.run_dir, run.config.to_json(), self._purge_step())
                          for run in self.runs]
        try:
            while PHASES.index(self.progress.phase) < PHASES.index(stop):
                phase = self.progress.phase
                phases[phase]()
                self._end_phase(phase)
        finally:
            for sink in (sink for sinks in self.sinks for sink in sinks):
                sink.close()
            self.sinks = []

    def _end_phase(self, phase: str) -> None:
        next_phase = self._next_phase(phase)
        self._log_training()
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

    def _offline(self) -> None:
        cfg, p = self.config, self.progress
        total = offline_phase_steps(cfg)
        with self._bar("offline", p.offline_step, total) as bar:
            while p.offline_step < total:
                batch = self._sample_uniform("offline")
                self.window_stats.add(self.agent.backbone.offline_update(batch, p.offline_step))
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
                self.window_stats.add(self.agent.pretrain_update(off, on, p.pretrain_step))
                self._advance("pretrain_step")
                bar.update()
                if p.pretrain_step in self.pretrain_snapshots:
                    self._store_pretrain_snapshot()
                # The policy is frozen here, so only training records and checkpoints (no evaluations) happen
                # inside the phase.
                if p.pretrain_step < cfg.n_pretrain:
                    if p.pretrain_step % cfg.log_every == 0:
                        self._log_training(bar)
                    if p.pretrain_step % cfg.checkpoint_every == 0:
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
        info, priorities = self.agent.finetune_update(
            off, on, batch, kappas, [p.online_step / cfg.online_steps] * len(self.runs), p.update_step
        )
        new_priorities = priorities.cpu().numpy().astype(np.float64)
        # The new priorities are the density ratios of the sampled items, normalised (docs/method.md §3.3).
        self.window_stats.add({**info, "priority_mean": new_priorities.mean(axis=-1),
                               "priority_max": new_priorities.max(axis=-1)})
        for run, run_indices, run_priorities in zip(self.runs, indices, new_priorities):
            run.balanced.update_priorities(run_indices, run_priorities)
        self._advance("update_step")

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
        obs = torch.as_tensor(np.stack([run.obs for run in self.runs]),  # type: ignore[misc]  # all reset above
                              dtype=torch.float32, device=self.device)
        actions = self.agent.backbone.act(obs.unsqueeze(1))[:, 0].cpu().numpy()
        noisy = []
        for run, action in zip(self.runs, actions):
            noise = run.rng.normal(0.0, self.config.exploration_noise, size=action.shape)
            noisy.append(np.clip(action + noise, -1.0, 1.0).astype(np.float32))
        for row, (run, action, (next_obs, reward, terminated, truncated)) in enumerate(
                zip(self.runs, noisy, self.envs.step(np.stack(noisy)))):
            # `done` is a true termination only; a time-limit cut bootstraps (§8).
            assert run.obs is not None
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
            return transform_reward(self.config.antmaze_reward, reward)
        return reward

    def _periodic(self, step: int, bar: tqdm | PlainProgress) -> None:
        if step % self.config.log_every == 0:
            self._log_training(bar)
        if step % self.config.eval_every == 0:
            scores = [record["score"] for record in self._evaluate(self.progress.phase)]
            self._postfix["score"] = f"{np.mean(scores):.1f}"
            bar.set_postfix(self._postfix)
        if step % self.config.checkpoint_every == 0:
            self.save_checkpoint()


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


def make_seed_envs(task: Task, configs: Sequence[Config]):
    """The online envs of every seed: one MJX batch (``--env-backend mjx``) or one gymnasium env per seed."""
    config = configs[0]
    if config.env_backend == "mjx":
        return _mjx_envs().MJXSeedEnvs(task.env_name, config.env_version, [c.seed for c in configs])
    return GymSeedEnvs([task.make_env(c.env_version, seed=c.seed) for c in configs])


def make_eval_envs(task: Task, configs: Sequence[Config]):
    """The evaluation envs: one gymnasium env per seed, or one MJX batch of every seed's evaluation episodes (each
    row reset with the seed its episode has in a gymnasium evaluation)."""
    config = configs[0]
    if config.env_backend == "mjx":
        rows = [episode_seed(c.seed, i) for c in configs for i in range(config.eval_episodes)]
        return _mjx_envs().MJXSeedEnvs(task.env_name, config.env_version, rows)
    return GymSeedEnvs([task.make_env(c.env_version, seed=c.seed) for c in configs])


def _mjx_envs():
    try:
        from opt_fast.envs import mjx as mjx_envs
    except ImportError as err:
        raise ImportError(f"--env-backend mjx needs mujoco-mjx and jax ({err}): pip install 'opt-fast[mjx]'") from err
    return mjx_envs
