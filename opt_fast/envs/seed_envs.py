"""One gymnasium env per seed behind the interface of :class:`opt_fast.envs.mjx.MJXSeedEnvs` (the trainer's online
and evaluation envs), and a mid-episode env's full state for checkpoints."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import mujoco
import numpy as np


class GymSeedEnvs:
    """One gymnasium env per seed behind :class:`opt_fast.envs.mjx.MJXSeedEnvs`' interface, stepped in turn."""

    def __init__(self, env_list: Sequence[gymnasium.Env]):
        self.envs = list(env_list)

    def reset(self, seeds: Sequence[int]) -> list[np.ndarray]:
        return [env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds)]

    def next_episode(self, row: int) -> np.ndarray:
        return self.envs[row].reset()[0]

    def step(self, actions: np.ndarray) -> list[tuple[np.ndarray, float, bool, bool]]:
        return [(obs, float(reward), terminated, truncated)
                for obs, reward, terminated, truncated, _ in (env.step(action) for env, action in zip(self.envs, actions))]

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


def get_env_state(env: gymnasium.Env) -> dict[str, Any]:
    """A mid-episode env's full state: MuJoCo's physics, step count within the episode, and its RNG; plus, for
    envs that have one (Adroit, AntMaze), the task state that ``reset`` draws outside the physics (targets)."""
    sim: Any = env.unwrapped  # a MuJoCo env (gymnasium types it as Env)
    physics = np.empty(mujoco.mj_stateSize(sim.model, _MUJOCO_STATE))
    mujoco.mj_getState(sim.model, sim.data, physics, _MUJOCO_STATE)
    return {"physics": physics, "elapsed_steps": _time_limit(env)._elapsed_steps,
            "np_random": sim.np_random.bit_generator.state,
            "task": env.task_state() if hasattr(env, "task_state") else None}


def set_env_state(env: Any, state: dict[str, Any]) -> None:
    env.reset()  # marks the env as reset for gymnasium's order checks; everything is overwritten below
    sim: Any = env.unwrapped
    mujoco.mj_setState(sim.model, sim.data, state["physics"], _MUJOCO_STATE)
    mujoco.mj_forward(sim.model, sim.data)
    _time_limit(env)._elapsed_steps = state["elapsed_steps"]
    sim.np_random.bit_generator.state = state["np_random"]
    if state.get("task") is not None:
        env.set_task_state(state["task"])
