"""The four phases of OPT (OPT.md §2) over one run directory, resumable from any checkpoint.

    offline   TD3+BC (or SPOT, after its behaviour VAE) on D_off  (offline_steps gradient steps)
    collect   frozen offline policy + N(0, 0.1) noise, no updates (n_tau env steps; OPT only)
    pretrain  meta-adaptation updates of a new critic Q_on        (n_pretrain updates; OPT only)
    finetune  balanced replay, TD on Q_off (and Q_on), kappa-mixed actor, UTD updates per env step

A run directory holds ``config.json``, ``metrics.jsonl`` (one record per evaluation), ``checkpoints/`` (``latest.pt``
every ``checkpoint_every`` steps and ``<phase>.pt`` at every phase end) and, when done, ``summary.json``.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
import torch
from tqdm import tqdm

from opt_fast import antmaze, envs
from opt_fast.agents.opt import OPTAgent
from opt_fast.agents.td3 import Batch
from opt_fast.config import COLLECT_FIELDS, OFFLINE_FIELDS, Config, kappa, offline_phase_steps, online_discount
from opt_fast.data.d4rl import OfflineDataset, check_env_compatible
from opt_fast.data.names import ADROIT_FAMILIES, ANTMAZE_FAMILY, parse_task
from opt_fast.data.scores import reference_scores
from opt_fast.evaluation import evaluate
from opt_fast.io import append_jsonl, load_torch, read_json, read_jsonl, save_torch, truncate_jsonl, write_json
from opt_fast.networks import use_critic_backend
from opt_fast.replay import ReplayBuffer

PHASES = ("offline", "collect", "pretrain", "finetune", "done")


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


class Trainer:
    def __init__(self, config: Config, run_dir: Path, dataset: OfflineDataset, cache_dir: Path | None = None,
                 collect_snapshots: Collection[int] = ()):
        self.config = config
        # Env steps at which the collection phase stores its state in ``cache_dir``, for runs with a smaller N_tau
        # to branch from (an ablation over N_tau); a normal run stores none.
        self.collect_snapshots = frozenset(collect_snapshots)
        self.run_dir = Path(run_dir)
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
        self.device = torch.device(config.device)
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        buffer_seeds = np.random.SeedSequence(config.seed).generate_state(3)

        self.env = make_env(env_name, config)
        self.eval_env = make_env(env_name, config)
        obs_dim, act_dim = envs.env_dims(env_name, config.env_version)
        check_env_compatible(dataset, obs_dim, act_dim)

        use_critic_backend(config.critic_backend, self.device)
        self.agent = OPTAgent(obs_dim, act_dim, config)
        if config.compile:
            self.agent.compile()
        # Q_on and the density net take their initial values from the same RNG; reseeding here makes the offline
        # phase identical with OPT on and off, so both variants can share it (the offline cache).
        torch.manual_seed(config.seed)
        n_off = len(dataset)
        offline = (dataset.observations, dataset.actions, self._train_reward(dataset.rewards),
                   dataset.next_observations, dataset.terminals.astype(np.float32))
        self.offline_buffer = ReplayBuffer(n_off, obs_dim, act_dim, seed=int(buffer_seeds[0]))
        self.offline_buffer.add_batch(*offline, priority=1.0)
        self.online_buffer = ReplayBuffer(config.online_steps, obs_dim, act_dim, seed=int(buffer_seeds[1]))
        # Balanced replay: every offline row at priority 1, online rows at the running maximum (§3.3).
        capacity = config.replay_ring_capacity if config.replay_ring else n_off + config.online_steps
        self.balanced = ReplayBuffer(capacity, obs_dim, act_dim, seed=int(buffer_seeds[2]), ring=config.replay_ring)
        self.balanced.add_batch(*offline, priority=1.0)

        self.progress = Progress()
        self.obs: np.ndarray | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_dir = self.run_dir / "checkpoints"

    # ------------------------------------------------------------------------------------------ driving
    def run(self) -> dict[str, Any]:
        """Run (or continue) every remaining phase; returns the summary."""
        self.run_until("done")
        summary = self.summary()
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def run_until(self, stop: str) -> None:
        """Run (or continue) the phases that come before phase ``stop`` (a sweep stops a run after its collection so
        that other runs can branch from its caches while it goes on)."""
        if stop not in PHASES:
            raise ValueError(f"unknown phase {stop!r}; phases: {', '.join(PHASES)}")
        phases = {"offline": self._offline, "collect": self._collect, "pretrain": self._pretrain,
                  "finetune": self._finetune}
        while PHASES.index(self.progress.phase) < PHASES.index(stop):
            phase = self.progress.phase
            started = time.perf_counter()
            phases[phase]()
            self.progress.phase_seconds[phase] = (
                self.progress.phase_seconds.get(phase, 0.0) + time.perf_counter() - started
            )
            self._end_phase(phase)

    def _next_phase(self, phase: str) -> str:
        if not self.config.opt and phase == "offline":
            return "finetune"  # the TD3 baseline fine-tunes for the whole online budget
        return PHASES[PHASES.index(phase) + 1]

    def _end_phase(self, phase: str) -> None:
        record = self._evaluate(phase)
        self.progress.phase_scores[phase] = record["score"]
        self.progress.phase = self._next_phase(phase)
        if self.progress.phase == "finetune":
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
                batch = self._sample(self.offline_buffer, self.offline_buffer.sample_uniform(cfg.batch_size))
                self.agent.backbone.offline_update(batch, p.offline_step)
                p.offline_step += 1
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
                off = self._sample(self.offline_buffer, self.offline_buffer.sample_uniform(cfg.batch_size)) \
                    if cfg.pretrain_data in ("both", "offline") else None
                on = self._sample(self.online_buffer, self.online_buffer.sample_uniform(cfg.batch_size)) \
                    if cfg.pretrain_data in ("both", "online") else None
                self.agent.pretrain_update(off, on, p.pretrain_step)
                p.pretrain_step += 1
                bar.update()
                # The policy is frozen here, so only checkpoints (no evaluations) happen inside the phase.
                if p.pretrain_step % cfg.checkpoint_every == 0 and p.pretrain_step < cfg.n_pretrain:
                    self.save_checkpoint()

    def _finetune(self) -> None:
        cfg, p = self.config, self.progress
        with self._bar("finetune", p.online_step, cfg.online_steps) as bar:
            while p.online_step < cfg.online_steps:
                self._env_step()
                # Updates need an online batch for the density-ratio net: the baseline starts once B_on holds one.
                if self.online_buffer.size >= cfg.batch_size:
                    for _ in range(cfg.utd):
                        self._finetune_update()
                bar.update()
                if p.online_step < cfg.online_steps:
                    self._periodic(p.online_step, bar)

    def _finetune_update(self) -> None:
        cfg, p = self.config, self.progress
        off = self._sample(self.offline_buffer, self.offline_buffer.sample_uniform(cfg.batch_size))
        on = self._sample(self.online_buffer, self.online_buffer.sample_uniform(cfg.batch_size))
        indices = self.balanced.sample_prioritized(cfg.batch_size)
        batch = self._sample(self.balanced, indices)
        _, priorities = self.agent.finetune_update(
            off, on, batch, kappa(cfg, p.online_step), p.online_step / cfg.online_steps, p.update_step
        )
        self.balanced.update_priorities(indices, priorities.cpu().numpy().astype(np.float64))
        p.update_step += 1

    # ------------------------------------------------------------------------------------------ pieces
    def _sample(self, buffer: ReplayBuffer, indices: np.ndarray) -> Batch:
        return Batch.from_numpy(buffer.gather(indices), self.device)

    def _env_step(self) -> None:
        """One env step with the current policy plus N(0, exploration_noise), stored in B_on and the replay."""
        cfg, p = self.config, self.progress
        if self.obs is None:
            self.obs, _ = self.env.reset(seed=cfg.seed)
        obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        action = self.agent.backbone.act(obs_t)[0].cpu().numpy()
        action = np.clip(action + self.rng.normal(0.0, cfg.exploration_noise, size=action.shape), -1.0, 1.0)
        action = action.astype(np.float32)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        # `done` is a true termination only; a time-limit cut bootstraps (§8).
        row = (self.obs, action, float(self._train_reward(reward)), next_obs, bool(terminated))
        self.online_buffer.add(*row)
        self.balanced.add(*row)
        p.online_step += 1
        p.episode_return += float(reward)
        if terminated or truncated:
            p.episodes += 1
            p.episode_return = 0.0
            self.obs, _ = self.env.reset()
        else:
            self.obs = next_obs

    def _train_reward(self, reward):
        """The reward learnt from: AntMaze's 0/1 success under ``antmaze_reward`` (evaluation counts the raw
        success), every other family's unchanged."""
        if self.family == ANTMAZE_FAMILY:
            return antmaze.transform_reward(self.config.antmaze_reward, reward)
        return reward

    def _periodic(self, step: int, bar: tqdm) -> None:
        if step % self.config.eval_every == 0:
            record = self._evaluate(self.progress.phase)
            bar.set_postfix(score=f"{record['score']:.1f}")
        if step % self.config.checkpoint_every == 0:
            self.save_checkpoint()

    def _evaluate(self, phase: str) -> dict[str, Any]:
        cfg, p = self.config, self.progress
        critics = [("q_off", self.agent.backbone.critic)]
        if self.agent.q_on is not None:
            critics.append(("q_on", self.agent.q_on))
        gamma = cfg.gamma if phase == "offline" else online_discount(cfg)
        result = evaluate(self.agent.backbone.act, self.eval_env, cfg.eval_episodes, cfg.seed, critics, gamma,
                          self.device)
        ref_min, ref_max = self.ref_scores
        record = {
            "phase": phase, "offline_step": p.offline_step, "online_step": p.online_step,
            "pretrain_step": p.pretrain_step, "update_step": p.update_step,
            "kappa": kappa(cfg, p.online_step) if cfg.opt and phase == "finetune" else None,
            # D4RL's normalised score; AntMaze returns are successes (reference 0 and 1): 100 x success rate.
            "score": 100.0 * (result["return_mean"] - ref_min) / (ref_max - ref_min),
            **result,
        }
        append_jsonl(self.metrics_path, record)
        p.n_metrics += 1
        return record

    def _bar(self, phase: str, initial: int, total: int) -> tqdm:
        disable = os.environ.get("OPT_FAST_PROGRESS", "1") == "0"
        return tqdm(total=total, initial=initial, desc=f"{self.dataset_label()} {phase}", unit="step",
                    dynamic_ncols=True, disable=disable, leave=True)

    def dataset_label(self) -> str:
        if self.dataset.name is not None:
            name = self.dataset.name.d4rl_id
        else:
            name = self.dataset.metadata.get("dataset_id", self.dataset.path.name)
        return f"{name} ({self.dataset.source})"

    def summary(self) -> dict[str, Any]:
        p = self.progress
        return {
            "dataset": self.dataset_label(),
            "data_source": self.dataset.source,
            "variant": self.config.backbone.upper() + ("+OPT" if self.config.opt else ""),
            "reference_scores": list(self.ref_scores),
            "dataset_path": str(self.dataset.path),
            "dataset_metadata": {key: value for key, value in self.dataset.metadata.items()
                                 if isinstance(value, (str, int, float, bool))},
            "env_packages": env_package_versions(self.family),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "code": code_version(),
            "machine": machine_description(),
            "seed": self.config.seed,
            "budget": self.config.budget,
            "final_score": p.phase_scores.get("finetune"),
            "phase_scores": p.phase_scores,
            "phase_seconds": p.phase_seconds,
            "online_steps": p.online_step,
            "updates": p.update_step,
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "progress": asdict(self.progress),
            "agent": self.agent.state_dict(),
            "buffers": {"online": self.online_buffer.state_dict(), "balanced": self.balanced.state_dict(),
                        "offline": self.offline_buffer.state_dict()},
            "rng": {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state},
            "env": None if self.obs is None else get_env_state(self.env),
            "obs": self.obs,
        }

    def save_checkpoint(self, phase_end: str | None = None) -> None:
        latest = self.checkpoint_dir / "latest.pt"
        save_torch(latest, self.state())
        if phase_end is not None:
            boundary = self.checkpoint_dir / f"{phase_end}.pt"
            boundary.unlink(missing_ok=True)
            os.link(latest, boundary)

    def load_state(self, state: dict[str, Any]) -> None:
        self.progress = Progress(**state["progress"])
        self.agent.load_state_dict(state["agent"])
        self.online_buffer.load_state_dict(state["buffers"]["online"])
        self.balanced.load_state_dict(state["buffers"]["balanced"])
        self.offline_buffer.load_state_dict(state["buffers"]["offline"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        self.obs = state["obs"]
        if state["env"] is not None:
            set_env_state(self.env, state["env"])

    def resume(self) -> None:
        """Continue from ``checkpoints/latest.pt``; metrics written after it are dropped and redone."""
        latest = self.checkpoint_dir / "latest.pt"
        state = load_torch(latest)
        if state["config"] != self.config.to_json():
            raise ValueError(f"{latest} was written with another configuration than {self.run_dir / 'config.json'}")
        self.load_state(state)
        truncate_jsonl(self.metrics_path, self.progress.n_metrics)

    # ------------------------------------------------------------------------------------------ offline cache
    def _offline_cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"offline-{self.config.digest(OFFLINE_FIELDS)}.pt"

    def _store_offline_cache(self) -> None:
        """The offline phase's end state, shared by every run (OPT or baseline) with the same offline config."""
        path = self._offline_cache_path()
        if path is not None and not path.exists():
            save_torch(path, {"state": self.state(), "metrics": read_jsonl(self.metrics_path)})

    def try_offline_cache(self) -> bool:
        """Start from a cached offline phase if one matches; returns whether it did."""
        path = self._offline_cache_path()
        if path is None or not path.exists():
            return False
        cached = load_torch(path)
        state = cached["state"]
        # The cached run may have had OPT on or off: only the backbone and the offline buffer carry over; the
        # RNG states carry over too, so the result equals a run that did its own offline phase.
        self.agent.load_backbone_state(state["agent"])
        self.offline_buffer.load_state_dict(state["buffers"]["offline"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        progress = Progress(**state["progress"])
        progress.phase = self._next_phase("offline")
        self.progress = progress
        for record in cached["metrics"]:
            append_jsonl(self.metrics_path, record)
        self.progress.n_metrics = len(cached["metrics"])
        if self.progress.phase == "finetune":
            self.agent.start_finetuning()
        self.save_checkpoint(phase_end="offline")
        return True

    # ------------------------------------------------------------------------------------------ collection prefix
    def _collect_snapshot_path(self, step: int) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"collect-{self.config.digest(COLLECT_FIELDS)}-{step}.pt"

    def _store_collect_snapshot(self) -> None:
        """The collection's state after ``online_step`` env steps. The policy is frozen and nothing is trained while
        collecting, so only the buffers, RNGs, env, progress and metrics so far change; Q_on and the density net are
        still at their seeded initial values, which a branching run has already."""
        path = self._collect_snapshot_path(self.progress.online_step)
        if path is None or path.exists():
            return
        state = {
            "progress": asdict(self.progress),
            "buffers": {"online": self.online_buffer.state_dict(), "balanced": self.balanced.state_dict()},
            "rng": {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state},
            "env": None if self.obs is None else get_env_state(self.env),
            "obs": self.obs,
        }
        save_torch(path, {"state": state, "metrics": read_jsonl(self.metrics_path)[: self.progress.n_metrics]})

    def try_collect_cache(self) -> bool:
        """Before collecting, take the first N_tau steps of a longer collection of the same seed if one stored
        them; returns whether it did. The run then continues exactly as if it had collected them itself."""
        path = self._collect_snapshot_path(self.config.n_tau)
        p = self.progress
        if p.phase != "collect" or p.online_step != 0 or path is None or not path.exists():
            return False
        cached = load_torch(path)
        state = cached["state"]
        self.online_buffer.load_state_dict(state["buffers"]["online"])
        self.balanced.load_state_dict(state["buffers"]["balanced"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        self.obs = state["obs"]
        if state["env"] is not None:
            set_env_state(self.env, state["env"])
        # Both share the records up to the end of the offline phase; append the collection's.
        for record in cached["metrics"][p.n_metrics:]:
            append_jsonl(self.metrics_path, record)
        self.progress = Progress(**state["progress"])
        self.save_checkpoint()
        return True


_MUJOCO_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


def _time_limit(env: gymnasium.Env) -> gymnasium.wrappers.TimeLimit:
    wrapper = env
    while not isinstance(wrapper, gymnasium.wrappers.TimeLimit):
        if not hasattr(wrapper, "env"):
            raise TypeError(f"{env} has no TimeLimit wrapper")
        wrapper = wrapper.env
    return wrapper


def make_env(name: str, config: Config):
    """The online (or evaluation) env of ``name`` on ``config.env_backend``, seeded with the run's seed."""
    if config.env_backend == "mjx":
        try:
            from opt_fast.mjx_envs import MJXGymEnv
        except ImportError as err:
            raise ImportError(f"--env-backend mjx needs mujoco-mjx and jax ({err}): pip install 'opt-fast[mjx]'") \
                from err
        return MJXGymEnv(name, config.env_version, seed=config.seed)
    return envs.make_env(name, config.env_version, seed=config.seed)


def get_env_state(env) -> dict[str, Any]:
    """A mid-episode env's full state. MuJoCo's: physics, step count within the episode, and its RNG; plus, for
    envs that have one (Adroit, AntMaze), the task state that ``reset`` draws outside the physics (targets). An
    MJX env's: its own ``state_dict``."""
    if not isinstance(env, gymnasium.Env):
        return {"mjx": env.state_dict()}
    sim = env.unwrapped
    physics = np.empty(mujoco.mj_stateSize(sim.model, _MUJOCO_STATE))
    mujoco.mj_getState(sim.model, sim.data, physics, _MUJOCO_STATE)
    return {"physics": physics, "elapsed_steps": _time_limit(env)._elapsed_steps,
            "np_random": sim.np_random.bit_generator.state,
            "task": env.task_state() if hasattr(env, "task_state") else None}


def set_env_state(env, state: dict[str, Any]) -> None:
    if "mjx" in state:
        env.load_state_dict(state["mjx"])
        return
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
             cache_dir: Path | None = None, collect_snapshots: Collection[int] = ()) -> Trainer:
    """A trainer for ``run_dir``: fresh (refusing to overwrite another run) or resumed from its last checkpoint.

    With a ``cache_dir``, a run starts from the cached offline phase and the stored collection prefix that match its
    configuration, if any; ``collect_snapshots`` are the env steps at which its own collection stores its state.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if config_path.exists():
        stored = Config.from_json(read_json(config_path))
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        if stored.to_json() != config.to_json():
            raise ValueError(f"--resume: {config_path} differs from the requested configuration")
    trainer = Trainer(config, run_dir, dataset, cache_dir, collect_snapshots)
    if resume and (run_dir / "checkpoints" / "latest.pt").exists():
        trainer.resume()
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_path, config.to_json())
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        trainer.try_offline_cache()
    trainer.try_collect_cache()
    return trainer
