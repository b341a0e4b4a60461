"""D4RL's recipe to make AntMaze data, on the envs of :mod:`opt_fast.envs.antmaze`.

Data generation follows D4RL: a goal-reaching ant policy (SAC, trained here in an open arena on the egocentric
goal direction, :func:`train_goal_reacher`, resumable) is steered by a BFS waypoint controller over the maze cells,
with N(0, 0.2) action noise, in 1000-step episodes whose rewards are relabelled as ||xy' - goal|| <= 0.5.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opt_fast.agents.common import Batch
from opt_fast.agents.sac import SAC, ReplayBuffer, SACConfig
from opt_fast.data.d4rl import write_d4rl_hdf5
from opt_fast.data.names import ANTMAZE_FAMILY, parse_dataset_name
from opt_fast.envs.antmaze import EVAL_CELLS, GOAL_RADIUS, RECIPES, AntMazeD4RL, base_env, make_env, maze_map
from opt_fast.io import load_torch, save_torch, write_json
from opt_fast.progress import progress_bar
from opt_fast.provenance import gymnasium_robotics_version

# ----------------------------------------------------------------------------------------------- goal reaching
def _yaw(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _rotate(xy: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * xy[0] - s * xy[1], s * xy[0] + c * xy[1]])


def egocentric_features(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The goal reacher's input from D4RL's 29-entry observation and a target x, y, with the heading removed:
    z, the orientation relative to the heading, joint angles, the velocity in the heading frame, angular and
    joint velocities, and the target's offset in the heading frame (29 entries). Walking towards a target is the
    same skill in every direction, so the policy learns it once."""
    z, quat, joints = obs[2], obs[3:7], obs[7:15]
    linear, rest = obs[15:18], obs[18:29]
    yaw = _yaw(quat)
    half = 0.5 * yaw
    # Orientation without the heading: conj(q_yaw) * q, q_yaw = (cos(yaw/2), 0, 0, sin(yaw/2)).
    cw, sz = math.cos(half), math.sin(half)
    w, x, y, zq = quat
    relative = np.array([cw * w + sz * zq, cw * x + sz * y, cw * y - sz * x, cw * zq - sz * w])
    return np.concatenate([[z], relative, joints, _rotate(linear[:2], -yaw), linear[2:], rest,
                           _rotate(np.asarray(target) - obs[:2], -yaw)]).astype(np.float32)


ARENA = "open"
_ARENA_MARGIN = 1.0  # targets stay this far inside the arena's walls (metres)
_HEALTHY_Z = (0.2, 1.0)  # gymnasium Ant's healthy torso height range


@dataclass(frozen=True)
class ReacherBudget:
    sac_steps: int
    """Env steps (one SAC update each after ``random_steps``) of the goal reacher's training."""
    random_steps: int = 10_000
    """Uniform random actions before the policy acts."""
    episode_steps: int = 500
    checkpoint_every: int = 25_000
    eval_episodes: int = 10
    """Waypoint-controller episodes on the umaze evaluation task that measure the reacher's success rate (0: none)."""


REACHER_BUDGETS: dict[str, ReacherBudget] = {
    "paper": ReacherBudget(sac_steps=3_000_000),
    "study": ReacherBudget(sac_steps=3_000_000),
    "quick": ReacherBudget(sac_steps=300_000),
    "smoke": ReacherBudget(sac_steps=300, random_steps=100, episode_steps=100, checkpoint_every=150, eval_episodes=1),
}


class _Arena:
    """The goal reacher's training task: an open room (gymnasium-robotics ``OPEN``) with targets at random
    offsets of 0.5-6 m (up to a maze cell's diagonal), a new one whenever the last is reached. Reward, as
    gymnasium's Ant with the goal's direction for "forward": velocity towards the target + 1 while healthy -
    0.5 |a|^2; the episode ends when the torso leaves the healthy height range."""

    def __init__(self, steps: int):
        from gymnasium_robotics.envs.maze import maps

        layout = [list(row) for row in maps.OPEN]
        self.env = AntMazeD4RL(base_env("umaze", layout, steps), end_at_goal=False)
        self.maze = self.env.unwrapped.maze  # type: ignore[attr-defined]  # a gymnasium-robotics maze env
        half_x = self.maze.map_width * self.maze.maze_size_scaling / 2 - self.maze.maze_size_scaling - _ARENA_MARGIN
        half_y = self.maze.map_length * self.maze.maze_size_scaling / 2 - self.maze.maze_size_scaling - _ARENA_MARGIN
        self.bounds = np.array([half_x, half_y])
        self.steps = steps
        self.dt = self.env.unwrapped.ant_env.dt  # type: ignore[attr-defined]

    def new_target(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        while True:
            angle, length = rng.uniform(-math.pi, math.pi), rng.uniform(0.5, 6.0)
            target = xy + length * np.array([math.cos(angle), math.sin(angle)])
            if np.all(np.abs(target) <= self.bounds):
                return target

    def episode(self, act: Callable[[np.ndarray], np.ndarray], seed: int, rng: np.random.Generator,
                on_step: Callable[[np.ndarray, np.ndarray, float, np.ndarray, bool], None]) -> float:
        obs, _ = self.env.reset(seed=seed)
        target = self.new_target(obs[:2], rng)
        total = 0.0
        for _ in range(self.steps):
            features = egocentric_features(obs, target)
            action = act(features)
            next_obs, _, _, _, _ = self.env.step(action)
            progress = (np.linalg.norm(target - obs[:2]) - np.linalg.norm(target - next_obs[:2])) / self.dt
            healthy = _HEALTHY_Z[0] <= next_obs[2] <= _HEALTHY_Z[1]
            reward = float(progress + (1.0 if healthy else 0.0) - 0.5 * np.square(action).sum())
            on_step(features, action, reward, egocentric_features(next_obs, target), not healthy)
            total += reward
            if not healthy:
                break
            obs = next_obs
            if np.linalg.norm(target - obs[:2]) <= GOAL_RADIUS:
                target = self.new_target(obs[:2], rng)
        return total


class WaypointController:
    """D4RL's AntMaze controller: the goal reacher walks to the centre of the next cell on a shortest path (BFS
    over free cells) towards the goal's cell, and to the goal itself once in that cell."""

    def __init__(self, env: AntMazeD4RL, policy: Callable[[np.ndarray], np.ndarray]):
        self.maze = env.unwrapped.maze  # type: ignore[attr-defined]
        self.free = np.array([[cell != 1 for cell in row] for row in self.maze.maze_map])
        self.policy = policy
        self._distances: dict[tuple[int, ...], np.ndarray] = {}

    def _distance_to(self, goal_cell: tuple[int, ...]) -> np.ndarray:
        if goal_cell not in self._distances:
            distance = np.full(self.free.shape, np.inf)
            distance[goal_cell] = 0
            queue = deque([goal_cell])
            while queue:
                row, col = queue.popleft()
                for d_row, d_col in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    nxt = (row + d_row, col + d_col)
                    if self.free[nxt] and distance[nxt] == np.inf:
                        distance[nxt] = distance[row, col] + 1
                        queue.append(nxt)
            self._distances[goal_cell] = distance
        return self._distances[goal_cell]

    def waypoint(self, xy: np.ndarray, goal: np.ndarray) -> np.ndarray:
        cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(xy))
        goal_cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(goal))
        distance = self._distance_to(goal_cell)
        if cell == goal_cell or not np.isfinite(distance[cell]):
            return goal
        row, col = cell
        neighbours = [(row + dr, col + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        nxt = min(neighbours, key=lambda c: distance[c])
        return self.maze.cell_rowcol_to_xy(np.array(nxt))

    def act(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return self.policy(egocentric_features(obs, self.waypoint(obs[:2], goal)))


def _reacher_dir(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / f"antmaze-goal-reacher-seed{seed}"


def train_goal_reacher(out_dir: str | Path, seed: int = 0, budget: str | ReacherBudget = "quick",
                       sac_steps: int | None = None) -> tuple[SAC, dict[str, Any]]:
    """Train (or continue training) the goal reacher; returns it and its record.

    Checkpoints go to ``<out_dir>/antmaze-goal-reacher-seed<seed>/checkpoint.pt`` at the first episode end after
    every ``checkpoint_every`` steps (episodes reset from seeds derived from ``seed``, so no mid-episode env state
    is needed); a later call continues from there, also with a larger ``sac_steps``. At the end the waypoint
    controller's success rate on the umaze evaluation task is measured and stored in ``record.json`` next to it.
    """
    sizes = budget if isinstance(budget, ReacherBudget) else REACHER_BUDGETS[budget]
    total = sizes.sac_steps if sac_steps is None else sac_steps
    directory = _reacher_dir(Path(out_dir), seed)
    checkpoint = directory / "checkpoint.pt"
    arena = _Arena(sizes.episode_steps)
    sac = SAC(29, 8, SACConfig(), seed=seed)
    # Room for every step: the last episode may run past ``total``, and a ring would overwrite early rows.
    buffer = ReplayBuffer(total + sizes.episode_steps, 29, 8, seed=seed + 1)
    rng, random_actions = np.random.default_rng(seed), np.random.default_rng(seed + 2)
    progress: dict[str, Any] = {"steps": 0, "episodes": 0, "returns": []}
    if checkpoint.exists():
        state = load_torch(checkpoint)
        sac.load_state_dict(state["sac"])
        buffer = ReplayBuffer(max(total, int(state["buffer"]["size"])) + sizes.episode_steps, 29, 8)
        buffer.load_state_dict(state["buffer"])
        rng.bit_generator.state, random_actions.bit_generator.state = state["rng"], state["random_actions"]
        progress = state["progress"]
        print(f"goal reacher: resuming from {checkpoint} at step {progress['steps']:,}")

    def act(features: np.ndarray) -> np.ndarray:
        if progress["steps"] < sizes.random_steps:
            return random_actions.uniform(-1.0, 1.0, size=8).astype(np.float32)
        return sac.act(features)

    def on_step(features, action, reward, next_features, done) -> None:
        buffer.add(features, action, reward, next_features, done)
        progress["steps"] += 1
        if progress["steps"] >= sizes.random_steps:
            sac.update(Batch.from_numpy(buffer.sample(sac.config.batch_size), sac.device))
        bar.update()

    next_checkpoint = (progress["steps"] // sizes.checkpoint_every + 1) * sizes.checkpoint_every
    with progress_bar("antmaze goal reacher", total, progress["steps"]) as bar:
        while progress["steps"] < total:
            episode_return = arena.episode(act, seed * 1_000_003 + progress["episodes"], rng, on_step)
            progress["episodes"] += 1
            progress["returns"].append(episode_return)
            bar.set_postfix(ret=f"{np.mean(progress['returns'][-10:]):.0f}")
            if progress["steps"] >= next_checkpoint or progress["steps"] >= total:
                save_torch(checkpoint, {"sac": sac.state_dict(), "buffer": buffer.state_dict(),
                                        "rng": rng.bit_generator.state,
                                        "random_actions": random_actions.bit_generator.state, "progress": progress})
                next_checkpoint += sizes.checkpoint_every
    record = {"steps": progress["steps"], "episodes": progress["episodes"],
              "recent_return": float(np.mean(progress["returns"][-10:])) if progress["returns"] else None,
              "umaze_success_rate": waypoint_success_rate(sac, "umaze", sizes.eval_episodes, seed)
              if sizes.eval_episodes else None}
    write_json(directory / "record.json", record)
    if sizes.eval_episodes:
        print(f"goal reacher after {record['steps']:,} steps: waypoint-controller success on the umaze evaluation "
              f"task {100 * record['umaze_success_rate']:.0f}% ({sizes.eval_episodes} episodes)")
    return sac, record


def _deterministic(sac: SAC) -> Callable[[np.ndarray], np.ndarray]:
    return lambda features: sac.act(features, deterministic=True)


def waypoint_success_rate(sac: SAC, maze: str, episodes: int, seed: int) -> float:
    """Fraction of D4RL evaluation episodes (start -> goal, end at the goal) the waypoint-following ant solves."""
    env = make_env(f"{ANTMAZE_FAMILY}-{maze}")
    controller = WaypointController(env, _deterministic(sac))
    successes = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + episode)
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, _ = env.step(controller.act(obs, env.goal))
        successes += int(terminated)
    env.close()
    return successes / episodes


# ----------------------------------------------------------------------------------------------- datasets
DATA_ROWS: dict[str, int] = {"paper": 1_000_000, "study": 1_000_000, "quick": 100_000, "smoke": 2_000}
"""Rows of a generated AntMaze dataset per budget (D4RL: 1M, 1000-step episodes)."""
EPISODE_STEPS = 1000
ACTION_NOISE = 0.2


def collect(kind: str, policy: Callable[[np.ndarray], np.ndarray], rows: int, seed: int) -> dict[str, np.ndarray]:
    """D4RL's AntMaze data: waypoint-controlled episodes of ``EPISODE_STEPS`` with N(0, 0.2) action noise,
    starts and goals as the dataset's recipe, rewards relabelled as ||xy' - goal|| <= 0.5, no terminals and a
    timeout on every episode's last row; ``infos/goal``, ``infos/qpos``, ``infos/qvel`` per row."""
    recipe = RECIPES[kind]
    start, goal = EVAL_CELLS[recipe.maze]
    env = AntMazeD4RL(base_env(recipe.maze, maze_map(recipe.maze), EPISODE_STEPS), end_at_goal=False)
    controller = WaypointController(env, policy)
    free_cells = np.argwhere(controller.free)
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {key: [] for key in ("observations", "actions", "rewards", "infos/goal",
                                                    "infos/qpos", "infos/qvel")}
    episode = 0
    with progress_bar(f"antmaze-{kind}", rows, unit="row") as bar:
        while len(columns["rewards"]) < rows:
            options = {"reset_cell": free_cells[rng.integers(len(free_cells))] if recipe.multistart else start,
                       "goal_cell": free_cells[rng.integers(len(free_cells))] if recipe.multigoal else goal}
            obs, _ = env.reset(seed=seed * 1_000_003 + episode, options=options)
            for _ in range(min(EPISODE_STEPS, rows - len(columns["rewards"]))):
                action = np.clip(controller.act(obs, env.goal) + rng.normal(0.0, ACTION_NOISE, 8), -1.0, 1.0)
                data = env.unwrapped.data  # type: ignore[attr-defined]  # a MuJoCo env
                columns["observations"].append(obs)
                columns["actions"].append(action)
                columns["infos/goal"].append(env.goal.copy())
                columns["infos/qpos"].append(data.qpos.copy())
                columns["infos/qvel"].append(data.qvel.copy())
                obs, reward, _, _, _ = env.step(action)
                columns["rewards"].append(reward)
                bar.update()
            episode += 1
    env.close()
    arrays = {key: np.asarray(value) for key, value in columns.items()}
    for key in ("observations", "actions", "rewards"):
        arrays[key] = arrays[key].astype(np.float32)
    arrays["terminals"] = np.zeros(rows, dtype=bool)
    arrays["timeouts"] = (np.arange(rows) % EPISODE_STEPS == EPISODE_STEPS - 1) | (np.arange(rows) == rows - 1)
    return arrays


def generate(dataset_id: str, out_dir: str | Path, seed: int = 0, budget: str = "quick",
             sac_steps: int | None = None, reacher_dir: str | Path | None = None) -> Path:
    """Train or load the goal reacher (``reacher_dir``, default ``out_dir``), then write
    ``<out_dir>/<D4RL file name>`` with the dataset's recipe; returns its path. Metadata records the recipe, the
    reacher's training steps and waypoint success rate, and the gymnasium-robotics version. A reacher that solves
    no umaze episode writes nothing (``ValueError``)."""

    name = parse_dataset_name(dataset_id)
    if name.family != ANTMAZE_FAMILY:
        raise ValueError(f"{name.d4rl_id} is not an AntMaze dataset")
    if budget not in DATA_ROWS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(DATA_ROWS)}")
    sac, record = train_goal_reacher(reacher_dir or out_dir, seed, budget, sac_steps)
    if record["umaze_success_rate"] == 0.0:
        # D4RL's AntMaze data come from an ant that reaches its waypoints; a failing one gives no such data.
        raise ValueError(f"{name.d4rl_id}: the goal-reaching ant ({record['steps']:,} SAC steps) solves no umaze "
                         f"episode by following waypoints, so its data would not be D4RL's; train it longer with "
                         f"--policy-steps N (it resumes from {Path(reacher_dir or out_dir)})")
    arrays = collect(name.kind, _deterministic(sac), DATA_ROWS[budget], seed)
    metadata = {"dataset": name.d4rl_id, "generator": "opt_fast.antmaze", "seed": seed, "budget": budget,
                "gymnasium_robotics": gymnasium_robotics_version(), "frame": "gymnasium-robotics",
                "goal_radius": GOAL_RADIUS, "action_noise": ACTION_NOISE, **asdict(RECIPES[name.kind]),
                "reacher_steps": record["steps"], "reacher_umaze_success_rate": record["umaze_success_rate"]}
    path = Path(out_dir) / name.d4rl_filename
    write_d4rl_hdf5(path, arrays, metadata)
    print(f"{name.d4rl_id}: {len(arrays['rewards']):,} rows, {int(arrays['rewards'].sum()):,} rows at the goal "
          f"-> {path}")
    return path
