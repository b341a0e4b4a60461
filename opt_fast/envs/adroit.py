"""Adroit hand tasks with D4RL's conventions: gymnasium-robotics' ``AdroitHand{Pen,Door,Hammer,Relocate}-v1`` with
D4RL's evaluation horizons (pen 100 steps, the others 200); none of them terminates. Door, hammer and relocate
rewards changed between gymnasium-robotics 1.2.0 and 1.4.x without a version bump, so every dataset records the
installed version (:mod:`opt_fast.datagen.adroit`) and every result the package versions (:mod:`opt_fast.provenance`).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from opt_fast.data.names import ADROIT_FAMILIES

HORIZONS: dict[str, int] = {"pen": 100, "door": 200, "hammer": 200, "relocate": 200}
"""D4RL's episode length per task (gymnasium-robotics registers 200 for all four)."""

def _check_task(task: str) -> None:
    if task not in ADROIT_FAMILIES:
        raise ValueError(f"unknown Adroit task {task!r}; valid tasks: {', '.join(ADROIT_FAMILIES)}")


def env_id(task: str) -> str:
    """The gymnasium-robotics id, e.g. ``AdroitHandDoor-v1``."""
    _check_task(task)
    return f"AdroitHand{task.capitalize()}-v1"


class AdroitEnv(gym.Wrapper):
    """An Adroit env whose checkpointable state includes what ``reset`` randomises in the MuJoCo *model* (door and
    board positions, pen target orientation, relocate target): physics state alone does not hold them."""

    def task_state(self) -> dict[str, np.ndarray]:
        model = self.unwrapped.model  # type: ignore[attr-defined]  # a MuJoCo env
        return {"body_pos": model.body_pos.copy(), "body_quat": model.body_quat.copy(),
                "site_pos": model.site_pos.copy()}

    def set_task_state(self, state: dict[str, np.ndarray]) -> None:
        model = self.unwrapped.model  # type: ignore[attr-defined]  # a MuJoCo env
        model.body_pos[:], model.body_quat[:], model.site_pos[:] = (
            state["body_pos"], state["body_quat"], state["site_pos"])


def make_env(task: str, seed: int | None = None) -> AdroitEnv:
    """``AdroitHand<Task>-v1`` with D4RL's horizon; with ``seed`` it is reset with it and its action space seeded."""
    import gymnasium_robotics  # registers the envs; imported here so MuJoCo-only use never needs the package

    gym.register_envs(gymnasium_robotics)
    env = AdroitEnv(gym.make(env_id(task), max_episode_steps=HORIZONS[task]))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
