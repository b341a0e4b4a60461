"""The environments of online collection and evaluation: a leaf of the package (it imports nothing of opt_fast but
the dataset names of :mod:`opt_fast.data.names`).

- :mod:`~opt_fast.envs.locomotion`: gymnasium MuJoCo (hopper, halfcheetah, walker2d, ant) with D4RL's conventions;
- :mod:`~opt_fast.envs.adroit`: the Adroit hand tasks (pen, door, hammer, relocate) of gymnasium-robotics;
- :mod:`~opt_fast.envs.antmaze`: AntMaze mazes (``antmaze-umaze``, ``antmaze-medium``, ``antmaze-large``);
- :mod:`~opt_fast.envs.mjx`: the locomotion envs on mujoco-mjx (batched, on JAX's device);
- :mod:`~opt_fast.envs.seed_envs`: one env per seed behind the trainer's interface, and env states for checkpoints.

:func:`make_env` and :func:`env_dims` take any family and pass it to its module (``version`` and ``ant_obs`` apply
to the locomotion envs only).
"""
from __future__ import annotations

from functools import lru_cache

import gymnasium as gym

from opt_fast.data.names import ADROIT_FAMILIES, ANTMAZE_FAMILY
from opt_fast.envs import locomotion


def make_env(family: str, version: str = "v5", seed: int | None = None, ant_obs: str = "d4rl") -> gym.Env:
    """The env of a task family (an AntMaze env by its maze, ``antmaze-umaze``); see :func:`locomotion.make_env`."""
    if family in ADROIT_FAMILIES:
        from opt_fast.envs import adroit

        return adroit.make_env(family, seed=seed)
    if family.startswith(ANTMAZE_FAMILY):
        from opt_fast.envs import antmaze

        return antmaze.make_env(family, seed=seed)
    return locomotion.make_env(family, version, seed, ant_obs)


@lru_cache(maxsize=None)
def env_dims(family: str, version: str = "v5", ant_obs: str = "d4rl") -> tuple[int, int]:
    """(observation size, action size) of :func:`make_env`'s env, e.g. ``(11, 3)`` for hopper."""
    env = make_env(family, version, ant_obs=ant_obs)
    try:
        obs_shape, action_shape = env.observation_space.shape, env.action_space.shape
        assert obs_shape is not None and action_shape is not None  # Box spaces
        return int(obs_shape[0]), int(action_shape[0])
    finally:
        env.close()
