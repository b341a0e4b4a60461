"""Regenerate D4RL's MuJoCo datasets with D4RL's own recipe ("How D4RL made its
data") on gymnasium's MuJoCo envs.

One SAC run per (family, env version, seed, budget) serves every dataset of that family:

- ``random``: uniform random actions.
- ``medium``: rollouts of the SAC policy snapshot taken when its evaluation return (deterministic policy) first
  reaches the medium target, ``MEDIUM_FRACTION`` (1/3) of the family's D4RL REF_MAX, the expert reference return:
  hopper 1078.1, halfcheetah 4045.0, walker2d 1530.8, ant 1293.2.
- ``medium-replay``: the SAC run's rows up to that snapshot (its whole replay buffer then).
- ``expert``: rollouts of the policy at the end of the SAC run.
- ``medium-expert``: the medium rows cut after their last complete episode, then the expert rows.

Rollouts *sample* actions from the stochastic policy, as D4RL did; episodes end at termination or after 1000
steps. If the SAC budget ends before the medium target is reached, the best evaluated policy stands in for it,
with a warning and ``metadata/medium_target_reached = False``.

Budgets (``GENERATION_BUDGETS``): ``paper`` has D4RL's sizes; D4RL's SAC reached the medium target after about
400k (hopper), 200k (halfcheetah) and 300k (walker2d) steps, the sizes of its medium-replay files. ``study``
keeps D4RL's 1M rows per rollout dataset and allows 500k SAC steps; ``quick`` allows 200k SAC steps and 100k rows,
where one SAC update (batch 256, 256-256 nets) costs ~10 ms of a core: hopper (seed 0, Hopper-v5) first reached
its target 1078 at step 62,917 on an Intel machine, ~12 minutes on one idle core. Medium and medium-replay stop at
the target, so a larger budget costs only where the target is slow to reach; a family that misses it within the
budget falls back to the best evaluated policy, flagged in the file. ``smoke`` runs in seconds, for tests.

Evaluations and checkpoints happen at the first episode end after every ``eval_every`` / ``checkpoint_every``
SAC steps, so the medium snapshot (and the medium-replay data) ends with a complete episode and a checkpoint
needs no mid-episode env state: each episode starts from ``reset(seed=...)`` with a seed derived from the run's
seed and the episode number. Every random draw comes from seeded generators held in the checkpoint, so an
interrupted generation resumes to the same files as an uninterrupted one (same machine, same thread count).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from opt_fast.agents.common import Batch
from opt_fast.agents.sac import SAC, ReplayBuffer, SACConfig, TanhGaussianActor
from opt_fast.data.d4rl import read_metadata, write_d4rl_hdf5
from opt_fast.data.names import MUJOCO_FAMILIES, parse_dataset_name
from opt_fast.data.scores import REF_SCORES, normalized_score
from opt_fast.envs import env_dims
from opt_fast.envs.locomotion import env_id, make_env
from opt_fast.evaluation import evaluate
from opt_fast.io import load_torch, read_json, save_torch, write_json
from opt_fast.progress import PlainProgress, progress_bar
from opt_fast.provenance import package_versions

MEDIUM_FRACTION = 1.0 / 3.0
"""D4RL's medium policy: SAC stopped when it first reaches about 1/3 of the expert's return (REF_MAX)."""

DATASET_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
_NEEDS_MEDIUM = ("medium", "medium-replay", "medium-expert")
_NEEDS_EXPERT = ("expert", "medium-expert")

# Independent random streams, derived from the run's seed (see _stream_seed).
_TRAIN, _REPLAY, _RANDOM, _MEDIUM, _EXPERT = range(5)


@dataclass(frozen=True)
class GenerationBudget:
    """How much SAC training and how many rows a generation spends."""

    name: str
    """Name of the budget; part of the SAC run's work directory, so runs of different budgets never mix."""
    sac_steps: int
    """Env steps of the SAC run, one gradient update per step after ``learning_starts``."""
    rows: int
    """Rows of each rollout dataset (random, medium, expert); medium-expert holds up to twice as many."""
    learning_starts: int
    """SAC steps taken with the initial policy before the first update."""
    eval_every: int
    """Evaluate the deterministic policy at the first episode end after every this many SAC steps."""
    eval_episodes: int
    checkpoint_every: int
    """Checkpoint at the first episode end after every this many SAC steps (and when the medium policy is found)."""
    medium_fraction: float = MEDIUM_FRACTION
    """Medium target as a fraction of the family's REF_MAX."""

    def __post_init__(self) -> None:
        for field in ("sac_steps", "rows", "eval_every", "eval_episodes", "checkpoint_every"):
            if getattr(self, field) < 1:
                raise ValueError(f"GenerationBudget {self.name!r}: {field} must be >= 1, got {getattr(self, field)}")
        if not 0 <= self.learning_starts < self.sac_steps:
            raise ValueError(f"GenerationBudget {self.name!r}: learning_starts must be in [0, sac_steps)")


GENERATION_BUDGETS: dict[str, GenerationBudget] = {
    # D4RL's sizes: 1M rows per dataset, SAC trained up to 1M steps.
    "paper": GenerationBudget("paper", sac_steps=1_000_000, rows=1_000_000, learning_starts=5_000,
                              eval_every=5_000, eval_episodes=10, checkpoint_every=50_000),
    # The study's data: D4RL's 1M rows per rollout dataset, and room for SAC to reach the medium target of every
    # family on any CPU (D4RL's SAC took ~200k-400k steps; medium and medium-replay stop at the target).
    "study": GenerationBudget("study", sac_steps=500_000, rows=1_000_000, learning_starts=5_000,
                              eval_every=2_500, eval_episodes=5, checkpoint_every=10_000),
    # The default job's data: hopper (seed 0, Hopper-v5) reached its target 1078 at 62,917 SAC steps on an Intel
    # machine but had not at 70k on an AMD one, so the budget leaves room (~100 updates/s on one core).
    "quick": GenerationBudget("quick", sac_steps=200_000, rows=100_000, learning_starts=2_000,
                              eval_every=2_500, eval_episodes=5, checkpoint_every=10_000),
    # Seconds, for tests: the medium target is not reached.
    "smoke": GenerationBudget("smoke", sac_steps=600, rows=700, learning_starts=300,
                              eval_every=200, eval_episodes=1, checkpoint_every=200),
}


def describe_budgets() -> str:
    """One line per budget preset, for the CLI's help."""
    return "; ".join(
        f"{b.name}: SAC up to {b.sac_steps:,} steps, {b.rows:,} rows per dataset" for b in GENERATION_BUDGETS.values()
    )


def _resolve_budget(budget: str | GenerationBudget) -> GenerationBudget:
    if isinstance(budget, GenerationBudget):
        return budget
    if budget not in GENERATION_BUDGETS:
        raise ValueError(f"unknown generation budget {budget!r}; valid budgets: {', '.join(GENERATION_BUDGETS)}")
    return GENERATION_BUDGETS[budget]


def _stream_seed(seed: int, *key: int) -> int:
    """A 32-bit seed for one random stream (and e.g. one episode) of the run seeded with ``seed``."""
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1)[0])


def medium_target(family: str, fraction: float = MEDIUM_FRACTION) -> float:
    """The evaluation return that makes a SAC policy "medium": ``fraction`` of the family's REF_MAX."""
    return fraction * REF_SCORES[family][1]


# --- rows in D4RL's layout ------------------------------------------------------------------------------------


class _Rows:
    """Rows laid end to end as in a D4RL file. The transition fields live in a :class:`ReplayBuffer` (SAC samples
    it while they are written); the fields only the file needs live beside it."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, nq: int, nv: int, seed: int):
        self.replay = ReplayBuffer(capacity, obs_dim, act_dim, seed)
        self.timeouts = np.zeros(capacity, dtype=bool)
        self.log_probs = np.zeros(capacity, dtype=np.float32)
        self.qpos = np.zeros((capacity, nq), dtype=np.float32)
        self.qvel = np.zeros((capacity, nv), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.replay)

    @property
    def full(self) -> bool:
        return len(self.replay) == self.replay.capacity

    def add(self, obs: np.ndarray, action: np.ndarray, log_prob: float | np.ndarray, reward: float, next_obs: np.ndarray,
            terminated: bool, truncated: bool, qpos: np.ndarray, qvel: np.ndarray) -> None:
        i = len(self.replay)  # the replay never wraps: its capacity is the number of rows wanted
        self.replay.add(obs, action, reward, next_obs, terminated)
        # A step that terminates is a terminal even when it is also the 1000th; timeouts are pure time-limit cuts.
        self.timeouts[i] = truncated and not terminated
        self.log_probs[i], self.qpos[i], self.qvel[i] = log_prob, qpos, qvel

    def d4rl_arrays(self, stop: int | None = None) -> dict[str, np.ndarray]:
        """The first ``stop`` rows (all by default) under D4RL's keys."""
        n = len(self) if stop is None else stop
        replay = self.replay
        return {
            "observations": replay.obs[:n],
            "actions": replay.action[:n],
            "rewards": replay.reward[:n],
            "terminals": replay.done[:n].astype(bool),
            "timeouts": self.timeouts[:n],
            "next_observations": replay.next_obs[:n],
            "infos/action_log_probs": self.log_probs[:n],
            "infos/qpos": self.qpos[:n],
            "infos/qvel": self.qvel[:n],
        }

    def state_dict(self) -> dict[str, Any]:
        n = len(self)
        return {"replay": self.replay.state_dict(), "timeouts": torch.from_numpy(self.timeouts[:n]),
                "log_probs": torch.from_numpy(self.log_probs[:n]), "qpos": torch.from_numpy(self.qpos[:n]),
                "qvel": torch.from_numpy(self.qvel[:n])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay.load_state_dict(state["replay"])
        n = len(self)
        for name in ("timeouts", "log_probs", "qpos", "qvel"):
            getattr(self, name)[:n] = state[name].numpy()


def _new_rows(env: gym.Env, capacity: int, seed: int) -> _Rows:
    """Empty rows sized for ``env``'s observations, actions and MuJoCo state."""
    sim = env.unwrapped.data  # type: ignore[attr-defined]  # a MuJoCo env
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]  # type: ignore[index]  # Boxes
    return _Rows(capacity, obs_dim, act_dim, sim.qpos.size, sim.qvel.size, seed)


Policy = Callable[[np.ndarray], tuple[np.ndarray, float | np.ndarray]]
"""observation -> (action, log-probability of the action)."""


def _run_episode(env: gym.Env, rows: _Rows, policy: Policy, reset_seed: int, after_step: Callable[[], None]) -> None:
    """Roll out one episode into ``rows`` until it ends or ``rows`` is full."""
    obs, _ = env.reset(seed=reset_seed)
    sim = env.unwrapped.data  # type: ignore[attr-defined]  # a MuJoCo env
    while not rows.full:
        action, log_prob = policy(obs)
        qpos, qvel = sim.qpos.copy(), sim.qvel.copy()  # D4RL's infos describe s_i, the state the action is taken in
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.add(obs, action, log_prob, float(reward), next_obs, terminated, truncated, qpos, qvel)
        after_step()
        if terminated or truncated:
            return
        obs = next_obs


def _rollout(family: str, env_version: str, policy: Policy, n_rows: int, seed: int, stream: int, label: str) -> _Rows:
    """``n_rows`` rows of episodes of ``policy``, the last one possibly unfinished (neither flag set)."""
    env = make_env(family, env_version)
    rows = _new_rows(env, n_rows, seed)
    episode = 0
    with progress_bar(f"{label} rollouts", n_rows) as bar:
        while not rows.full:
            _run_episode(env, rows, policy, _stream_seed(seed, stream, episode), lambda: bar.update(1))
            episode += 1
    env.close()
    return rows


def _random_policy(act_dim: int, seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    log_prob = -act_dim * math.log(2.0)  # uniform density on [-1, 1]^act_dim
    return lambda obs: (rng.uniform(-1.0, 1.0, act_dim).astype(np.float32), log_prob)


def _sampling_policy(actor_state: dict[str, torch.Tensor], obs_dim: int, act_dim: int, seed: int) -> Policy:
    """The snapshot's stochastic policy with its own noise generator."""
    actor = TanhGaussianActor(obs_dim, act_dim, SACConfig().hidden)
    actor.load_state_dict(actor_state)
    generator = torch.Generator().manual_seed(seed)
    return lambda obs: actor.act(obs, False, generator)


# --- the SAC run ------------------------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    """An actor's weights, the SAC step they were taken at and their evaluation return."""

    actor: dict[str, torch.Tensor]
    step: int
    eval_return: float


def _snapshot_state(snapshot: _Snapshot | None) -> dict[str, Any] | None:
    return None if snapshot is None else dataclasses.asdict(snapshot)


def _snapshot_from(state: dict[str, Any] | None) -> _Snapshot | None:
    return None if state is None else _Snapshot(**state)


class _SACRun:
    """The SAC run behind the medium, medium-replay and expert data, resumable from ``work_dir/checkpoint.pt``."""

    def __init__(self, family: str, env_version: str, seed: int, budget: GenerationBudget, work_dir: Path,
                 on_checkpoint: Callable[[int], None] | None):
        self.family, self.env_version, self.seed, self.budget = family, env_version, seed, budget
        self.work_dir, self.on_checkpoint = work_dir, on_checkpoint
        self.target = medium_target(family, budget.medium_fraction)
        self.env = make_env(family, env_version)
        self.eval_env = make_env(family, env_version)
        self.obs_dim, self.act_dim = env_dims(family, env_version)
        self.agent = SAC(self.obs_dim, self.act_dim, SACConfig(), seed=_stream_seed(seed, _TRAIN))
        self.rows = _new_rows(self.env, budget.sac_steps, _stream_seed(seed, _REPLAY))
        self.episode = 0
        self.next_eval, self.next_checkpoint = budget.eval_every, budget.checkpoint_every
        self.evals: list[tuple[int, float]] = []
        self.best: _Snapshot | None = None
        self.medium: _Snapshot | None = None
        self.medium_reached = False
        self.expert: _Snapshot | None = None
        self._open_work_dir()

    @property
    def step(self) -> int:
        return len(self.rows)

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoint.pt"

    def _open_work_dir(self) -> None:
        """Check that an existing work directory belongs to this budget, and resume from its checkpoint."""
        budget_file = self.work_dir / "budget.json"
        budget = dataclasses.asdict(self.budget)
        if budget_file.exists():
            recorded = read_json(budget_file)
            if recorded != budget:
                raise ValueError(f"{budget_file}: the SAC run there used budget {recorded}, not {budget}; "
                                 f"remove {self.work_dir} or use another budget name")
        else:
            write_json(budget_file, budget)
        if self.checkpoint_path.exists():
            self._load(load_torch(self.checkpoint_path))

    def _state(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(), "rows": self.rows.state_dict(), "episode": self.episode,
            "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint, "evals": self.evals,
            "best": _snapshot_state(self.best), "medium": _snapshot_state(self.medium),
            "medium_reached": self.medium_reached, "expert": _snapshot_state(self.expert),
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.rows.load_state_dict(state["rows"])
        self.episode = state["episode"]
        self.next_eval, self.next_checkpoint = state["next_eval"], state["next_checkpoint"]
        self.evals = [tuple(e) for e in state["evals"]]
        self.best, self.medium = _snapshot_from(state["best"]), _snapshot_from(state["medium"])
        self.expert, self.medium_reached = _snapshot_from(state["expert"]), state["medium_reached"]

    def _checkpoint(self) -> None:
        self.next_checkpoint = (self.step // self.budget.checkpoint_every + 1) * self.budget.checkpoint_every
        save_torch(self.checkpoint_path, self._state())
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.step)

    def _snapshot(self, eval_return: float) -> _Snapshot:
        actor = {k: v.detach().clone() for k, v in self.agent.actor.state_dict().items()}
        return _Snapshot(actor, self.step, eval_return)

    def _evaluate(self) -> float:
        actor = self.agent.actor
        result = evaluate(lambda obs: actor(obs, deterministic=True)[0], self.eval_env,
                          self.budget.eval_episodes, seed=self.seed)
        eval_return = result["return_mean"]
        self.evals.append((self.step, eval_return))
        self.next_eval = (self.step // self.budget.eval_every + 1) * self.budget.eval_every
        if self.best is None or eval_return > self.best.eval_return:
            self.best = self._snapshot(eval_return)
        if self.medium is None and eval_return >= self.target:
            # The first eval to reach the target is also the best so far: any better one would have reached it.
            self.medium, self.medium_reached = self.best, True
            save_torch(self.work_dir / "medium_policy.pt", _snapshot_state(self.medium))
        return eval_return

    def _finish(self) -> None:
        """End of the SAC budget: the expert is the final policy; the medium falls back to the best one."""
        if not self.evals or self.evals[-1][0] != self.step:
            self._evaluate()
        self.expert = self._snapshot(self.evals[-1][1])
        save_torch(self.work_dir / "expert_policy.pt", _snapshot_state(self.expert))
        if self.medium is None:
            assert self.best is not None
            self.medium = self.best
            save_torch(self.work_dir / "medium_policy.pt", _snapshot_state(self.medium))

    def _update(self, bar: tqdm | PlainProgress) -> None:
        if self.step > self.budget.learning_starts:
            self.agent.update(Batch.from_numpy(self.rows.replay.sample(self.agent.config.batch_size), "cpu"))
        bar.update(1)

    def train(self, until: Literal["medium", "end"]) -> None:
        """Train until the medium policy is known (``until="medium"``) or to the end of the budget (``"end"``)."""

        def done() -> bool:
            return (self.medium if until == "medium" else self.expert) is not None

        if done():
            return
        actor, generator = self.agent.actor, self.agent.generator

        def policy(obs: np.ndarray) -> tuple[np.ndarray, float | np.ndarray]:
            return actor.act(obs, False, generator)

        label = f"SAC {env_id(self.family, self.env_version)} (medium target {self.target:.0f})"
        with progress_bar(label, self.budget.sac_steps, self.step) as bar:
            if self.evals:
                bar.set_postfix(eval_return=f"{self.evals[-1][1]:.1f}")
            while not done():
                _run_episode(self.env, self.rows, policy, _stream_seed(self.seed, _TRAIN, self.episode),
                             lambda: self._update(bar))
                self.episode += 1
                had_medium = self.medium is not None
                if self.step >= self.next_eval:
                    bar.set_postfix(eval_return=f"{self._evaluate():.1f}")
                if self.rows.full:
                    self._finish()
                if self.step >= self.next_checkpoint or self.rows.full or (self.medium is not None and not had_medium):
                    self._checkpoint()


# --- files ------------------------------------------------------------------------------------------------------


def _complete_episode_returns(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Returns of the episodes that end inside the arrays (by termination or time limit)."""
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    if len(ends) == 0:
        return np.zeros(0)
    rewards_through_last_end = arrays["rewards"][: ends[-1] + 1].astype(np.float64)
    return np.add.reduceat(rewards_through_last_end, np.concatenate(([0], ends[:-1] + 1)))


def _last_episode_end(arrays: dict[str, np.ndarray]) -> int:
    """Number of rows up to and including the last complete episode."""
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    return int(ends[-1]) + 1 if len(ends) else 0


def _summary(dataset_id: str, family: str, arrays: dict[str, np.ndarray]) -> tuple[dict[str, float], str]:
    """(behaviour-return statistics, a printable line with the raw and D4RL-normalised scores)."""
    returns = _complete_episode_returns(arrays)
    if len(returns) == 0:
        return {"episodes": 0}, f"{dataset_id}: {len(arrays['rewards']):,} rows, no complete episode"
    stats = {"episodes": int(len(returns)), "mean": float(returns.mean()), "std": float(returns.std()),
             "min": float(returns.min()), "max": float(returns.max())}
    mean, low, high = (normalized_score(family, stats[key]) for key in ("mean", "min", "max"))
    line = (f"{dataset_id}: {len(arrays['rewards']):,} rows, {len(returns)} complete episodes, return mean "
            f"{stats['mean']:.1f} (min {stats['min']:.1f}, max {stats['max']:.1f}), D4RL-normalised "
            f"{mean:.1f} (min {low:.1f}, max {high:.1f})")
    return stats, line


def _concat(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([first[key], second[key]]) for key in first}


def _random_dataset(family: str, env_version: str, seed: int, plan: GenerationBudget) -> dict[str, np.ndarray]:
    act_dim = env_dims(family, env_version)[1]
    policy = _random_policy(act_dim, _stream_seed(seed, _RANDOM))
    return _rollout(family, env_version, policy, plan.rows, seed, _RANDOM, "random").d4rl_arrays()


def _sac_dataset(run: _SACRun, kind: str, dataset_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(rows, metadata) of a dataset made from the SAC run: medium, medium-replay, expert or medium-expert."""
    run.train("end" if kind in _NEEDS_EXPERT else "medium")
    obs_dim, act_dim = run.obs_dim, run.act_dim
    budget, seed = run.budget, run.seed
    meta: dict[str, Any] = {}

    def rollout(snapshot: _Snapshot, stream: int, label: str) -> dict[str, np.ndarray]:
        policy = _sampling_policy(snapshot.actor, obs_dim, act_dim, _stream_seed(seed, stream))
        return _rollout(run.family, run.env_version, policy, budget.rows, seed, stream, label).d4rl_arrays()

    parts = []
    if kind in _NEEDS_MEDIUM:
        medium = run.medium
        assert medium is not None
        meta.update(medium_target=run.target, medium_target_reached=run.medium_reached,
                    medium_policy_step=medium.step, medium_policy_return=medium.eval_return)
        if not run.medium_reached:
            # A plain line: a Python warning would print the source line that called generate().
            print(f"warning: {dataset_id}: SAC did not reach the medium target {run.target:.1f} "
                  f"({budget.medium_fraction:.3g} x REF_MAX) within {budget.sac_steps:,} steps of budget "
                  f"{budget.name!r}; the medium data use the best evaluated policy instead (return "
                  f"{medium.eval_return:.1f} at step {medium.step:,})", file=sys.stderr)
        if kind == "medium-replay":
            parts.append(run.rows.d4rl_arrays(medium.step))
        else:
            parts.append(rollout(medium, _MEDIUM, "medium"))
    if kind in _NEEDS_EXPERT:
        expert = run.expert
        assert expert is not None
        meta.update(expert_policy_step=expert.step, expert_policy_return=expert.eval_return)
        parts.append(rollout(expert, _EXPERT, "expert"))
    if kind == "medium-expert":
        medium_rows = {key: value[: _last_episode_end(parts[0])] for key, value in parts[0].items()}
        return _concat(medium_rows, parts[1]), meta
    return parts[0], meta


def _budget_settings(plan: GenerationBudget) -> str:
    return json.dumps(dataclasses.asdict(plan), sort_keys=True)


def _made_by(path: Path, dataset_id: str, gym_id: str, seed: int, plan: GenerationBudget) -> bool:
    """Whether ``path`` is a finished generation of this very request (files are written atomically, so an
    existing one is complete)."""
    if not path.exists():
        return False
    meta = read_metadata(path)
    return (meta.get("generator") == "opt-fast" and meta.get("dataset_id") == dataset_id
            and meta.get("env_id") == gym_id and meta.get("seed") == seed
            and meta.get("budget_settings") == _budget_settings(plan))


def generate(
    name: str,
    out_dir: Path,
    seed: int = 0,
    budget: str | GenerationBudget = "quick",
    env_version: str = "v5",
    on_checkpoint: Callable[[int], None] | None = None,
) -> Path:
    """Generate the MuJoCo dataset ``name`` (e.g. ``hopper-medium-replay``) with D4RL's recipe and write it to
    ``<out_dir>/<D4RL file name>`` (atomically); returns that path.

    The SAC run's state lives in ``<out_dir>/_work/<family>-<env_version>-seed<seed>-<budget>/`` and is shared by
    the family's datasets; an interrupted run resumes from its last checkpoint. ``on_checkpoint(step)`` is called
    after every checkpoint. A file this very request (dataset, env, seed, budget) made before is kept as it is.
    ``torch.set_num_threads`` is left to the caller.
    """
    dataset = parse_dataset_name(name)
    if dataset.family not in MUJOCO_FAMILIES or dataset.kind not in DATASET_KINDS:
        raise ValueError(f"cannot generate {dataset.d4rl_id}: generation covers {', '.join(MUJOCO_FAMILIES)} x "
                         f"{', '.join(DATASET_KINDS)}")
    if dataset.version != "v2":
        raise ValueError(f"cannot generate {dataset.d4rl_id}: generated files follow the v2 layout; ask for "
                         f"{dataset.family}-{dataset.kind}-v2")
    family, plan = dataset.family, _resolve_budget(budget)
    gym_id = env_id(family, env_version)  # a bad version fails here, before any work
    path = Path(out_dir) / dataset.d4rl_filename
    if _made_by(path, dataset.d4rl_id, gym_id, seed, plan):
        print(f"{path} exists (same dataset, env, seed and budget): kept")
        return path
    meta: dict[str, Any]
    if dataset.kind == "random":
        arrays, meta = _random_dataset(family, env_version, seed, plan), {"algorithm": "uniform random actions"}
    else:
        work_dir = Path(out_dir) / "_work" / f"{family}-{env_version}-seed{seed}-{plan.name}"
        run = _SACRun(family, env_version, seed, plan, work_dir, on_checkpoint)
        arrays, meta = _sac_dataset(run, dataset.kind, dataset.d4rl_id)
        meta["algorithm"] = "SAC"
    stats, line = _summary(dataset.d4rl_id, family, arrays)
    versions = package_versions()
    meta.update(
        generator="opt-fast", generator_version=versions["opt-fast"], env_id=gym_id, env_version=env_version,
        dataset_id=dataset.d4rl_id, seed=seed, budget=plan.name, budget_settings=_budget_settings(plan),
        package_versions=json.dumps(versions, sort_keys=True),
        behavior_returns=json.dumps(stats),
    )
    write_d4rl_hdf5(path, arrays, meta)
    print(f"{line}\n  -> {path}")
    return path
