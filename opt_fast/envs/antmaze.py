"""AntMaze with D4RL's conventions on gymnasium-robotics ``AntMaze_*-v4`` (D4RL's recipe to make its data:
:mod:`opt_fast.datagen.antmaze`).

Environment:

- Observation: D4RL's 29 entries, the ant's x, y (``achieved_goal``) followed by the 27 proprioceptive entries
  (``observation``: qpos[2:] and qvel); the goal is not observed, as in D4RL.
- Task: D4RL's evaluation task per maze, a fixed start cell and goal cell (umaze (1,1) -> (3,1), medium
  (1,1) -> (6,6), large (1,1) -> (7,9), row/column in the maze map); gymnasium-robotics adds uniform noise of
  +-0.25 * cell size to both positions. Horizons: umaze 700 steps, medium and large 1000.
- Reward and success as D4RL counts them: reward 1 when the ant's x, y is within ``GOAL_RADIUS`` = 0.5 of the goal
  (gymnasium-robotics uses 0.45), and the episode ends there. An episode's return is therefore its success, and
  the score is 100 x the success rate.
- The maze frame is gymnasium-robotics' (centred, y up): D4RL's own ``antmaze-*-v2`` files load, but their maze is
  the mirror image of this one, so only data made in this frame (Minari's ``D4RL/antmaze/*-v1``, or
  :func:`opt_fast.datagen.antmaze.generate`) matches the online env.

Training rewards: the dataset's 0/1 rewards and the online rewards go through
:func:`opt_fast.data.scores.transform_reward` (``Config.antmaze_reward``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from opt_fast.data.d4rl import flatten_observation
from opt_fast.data.names import ANTMAZE_FAMILY

GOAL_RADIUS = 0.5
"""D4RL's success radius around the goal (metres)."""
MAZES: dict[str, str] = {"umaze": "UMaze", "medium": "Medium", "large": "Large"}
"""Maze -> gymnasium-robotics env name part (``AntMaze_<part>-v4``)."""
HORIZONS: dict[str, int] = {"umaze": 700, "medium": 1000, "large": 1000}
EVAL_CELLS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "umaze": ((1, 1), (3, 1)), "medium": ((1, 1), (6, 6)), "large": ((1, 1), (7, 9)),
}
"""D4RL's evaluation (start cell, goal cell) per maze, as (row, column) of the maze map."""


@dataclass(frozen=True)
class Recipe:
    """How a D4RL AntMaze dataset was collected (its file name's ``multistart`` / ``multigoal`` flags)."""

    maze: str
    multistart: bool
    """Every episode starts in a random free cell (else the evaluation start cell)."""
    multigoal: bool
    """Every episode has a random free goal cell (else the evaluation goal cell)."""


RECIPES: dict[str, Recipe] = {
    "umaze": Recipe("umaze", False, False),
    "umaze-diverse": Recipe("umaze", True, True),
    "medium-play": Recipe("medium", True, False),
    "medium-diverse": Recipe("medium", True, True),
    "large-play": Recipe("large", True, False),
    "large-diverse": Recipe("large", True, True),
}


def env_key(dataset_kind: str) -> str:
    """The env of a dataset, named by its maze: ``umaze-diverse`` -> ``antmaze-umaze``."""
    if dataset_kind not in RECIPES:
        raise ValueError(f"unknown AntMaze dataset kind {dataset_kind!r}; valid kinds: {', '.join(RECIPES)}")
    return f"{ANTMAZE_FAMILY}-{RECIPES[dataset_kind].maze}"


def _maze_of(key: str) -> str:
    maze = key.removeprefix(f"{ANTMAZE_FAMILY}-")
    if maze not in MAZES:
        raise ValueError(f"unknown AntMaze env {key!r}; valid envs: {', '.join(f'antmaze-{m}' for m in MAZES)}")
    return maze


def maze_map(maze: str, start: tuple[int, int] | None = None, goal: tuple[int, int] | None = None) -> list[list]:
    """gymnasium-robotics' map of ``maze`` with the start (``r``) and goal (``g``) cells marked."""
    from gymnasium_robotics.envs.maze import maps

    layout = [list(row) for row in {"umaze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}[maze]]
    for cell, mark in ((start, "r"), (goal, "g")):
        if cell is not None:
            if layout[cell[0]][cell[1]] == 1:
                raise ValueError(f"cell {cell} of the {maze} maze is a wall")
            layout[cell[0]][cell[1]] = mark
    return layout


class AntMazeD4RL(gym.Wrapper):
    """A gymnasium-robotics AntMaze env with D4RL's observation, reward and success (see the module docstring).

    ``end_at_goal`` ends the episode on success (D4RL's evaluation); data collection keeps going.
    """

    def __init__(self, env: gym.Env, goal_radius: float = GOAL_RADIUS, end_at_goal: bool = True):
        super().__init__(env)
        self.goal_radius = goal_radius
        self.end_at_goal = end_at_goal
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(29,), dtype=np.float64)

    @property
    def goal(self) -> np.ndarray:
        return self.unwrapped.goal  # type: ignore[attr-defined]  # a gymnasium-robotics maze env

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return flatten_observation(obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, _, _, truncated, info = self.env.step(action)
        success = bool(np.linalg.norm(obs["achieved_goal"] - self.goal) <= self.goal_radius)
        info["success"] = success
        return flatten_observation(obs), float(success), success and self.end_at_goal, truncated, info

    def task_state(self) -> dict[str, Any]:
        """What a checkpoint needs besides physics: the goal and start, and the inner ant env's RNG."""
        maze_env: Any = self.unwrapped  # a gymnasium-robotics maze env
        return {"goal": maze_env.goal.copy(), "reset_pos": maze_env.reset_pos.copy(),
                "ant_rng": maze_env.ant_env.np_random.bit_generator.state}

    def set_task_state(self, state: dict[str, Any]) -> None:
        maze_env: Any = self.unwrapped  # a gymnasium-robotics maze env
        maze_env.goal, maze_env.reset_pos = state["goal"].copy(), state["reset_pos"].copy()
        maze_env.update_target_site_pos()
        maze_env.ant_env.np_random.bit_generator.state = state["ant_rng"]


def base_env(maze: str, layout: list[list], horizon: int) -> gym.Env:
    import gymnasium_robotics  # registers the envs; imported here so MuJoCo-only use never needs the package

    gym.register_envs(gymnasium_robotics)
    with warnings.catch_warnings():
        # v4 on purpose: Minari's D4RL/antmaze datasets were collected on it (gymnasium flags it as outdated).
        warnings.filterwarnings("ignore", message=".*AntMaze_.*out of date", category=DeprecationWarning)
        return gym.make(f"AntMaze_{MAZES[maze]}-v4", maze_map=layout, continuing_task=True, reset_target=False,
                        max_episode_steps=horizon)


def make_env(key: str, seed: int | None = None) -> AntMazeD4RL:
    """D4RL's evaluation task of a maze (``antmaze-umaze``, ``antmaze-medium``, ``antmaze-large``)."""
    maze = _maze_of(key)
    start, goal = EVAL_CELLS[maze]
    env = AntMazeD4RL(base_env(maze, maze_map(maze, start, goal), HORIZONS[maze]))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
