"""Gymnasium MuJoCo locomotion environments with D4RL's conventions.

Every env runs 1000-step episodes; hitting the limit is reported as ``truncated``, never ``terminated``, so a
time-limit cut bootstraps (docs/method.md §8). Versions (gymnasium 1.4):

- ``v5`` (default) stops paying the healthy reward on the terminating step, and Walker2d-v5 changed the foot
  friction: evaluate policies trained on D4RL walker2d data on ``v4``.
- Ant: D4RL's observation has 111 entries, gym Ant-v2's 27 joint positions/velocities followed by 84 contact
  forces that the MuJoCo 2 bindings left at zero. ``ant_obs`` selects what the env gives:

  - ``d4rl`` (default): the 27 entries and 84 zeros = 111 on v4 and v5, D4RL's shape and values. On v4 the
    reward then has no contact cost, as D4RL's had none (its contact forces were zero); v5 always charges it.
  - ``contact``: gymnasium's contact forces. v4 (``use_contact_forces=True``): 27 + 84 clipped forces = 111,
    reward with contact cost; v5 (its default): 27 + 78 = 105, the world body's 6 entries left out.
  - ``plain``: the 27 entries alone.

"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

MAX_EPISODE_STEPS = 1000
"""D4RL registers every MuJoCo locomotion env with a 1000-step limit."""

FAMILIES: dict[str, str] = {"hopper": "Hopper", "halfcheetah": "HalfCheetah", "walker2d": "Walker2d", "ant": "Ant"}
"""Task family -> gymnasium env name (without version)."""

VERSIONS = ("v4", "v5")
ANT_OBS = ("d4rl", "contact", "plain")

_ANT_BASE_DIM = 27
_D4RL_ANT_CONTACT_DIM = 84  # gym Ant-v2: 14 bodies x 6 contact-force entries


def _check(family: str, version: str, ant_obs: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown env family {family!r}; valid families: {', '.join(FAMILIES)}")
    if version not in VERSIONS:
        raise ValueError(f"unknown env version {version!r} for {family}; valid versions: {', '.join(VERSIONS)}")
    if ant_obs not in ANT_OBS:
        raise ValueError(f"unknown ant_obs {ant_obs!r}; valid options: {', '.join(ANT_OBS)}")


def env_id(family: str, version: str = "v5") -> str:
    """The gymnasium id, e.g. ``env_id("walker2d", "v4") == "Walker2d-v4"``."""
    _check(family, version, "d4rl")
    return f"{FAMILIES[family]}-{version}"


def _ant_kwargs(version: str, ant_obs: str) -> dict[str, bool]:
    """gymnasium constructor options giving the base 27 entries (``d4rl``, ``plain``) or contact forces."""
    with_contacts = ant_obs == "contact"
    if version == "v4":
        return {"use_contact_forces": with_contacts}
    return {"include_cfrc_ext_in_observation": with_contacts}


class _ZeroContactForces(gym.ObservationWrapper):
    """Appends D4RL's 84 always-zero contact-force entries to Ant's 27-entry observation."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Box), space
        low = np.concatenate([space.low, np.zeros(_D4RL_ANT_CONTACT_DIM)])
        high = np.concatenate([space.high, np.zeros(_D4RL_ANT_CONTACT_DIM)])
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, np.zeros(_D4RL_ANT_CONTACT_DIM, dtype=observation.dtype)])


def make_env(family: str, version: str = "v5", seed: int | None = None, ant_obs: str = "d4rl") -> gym.Env:
    """A MuJoCo env for ``family`` (hopper, halfcheetah, walker2d, ant) with a 1000-step time limit.

    With ``seed``, the env is reset with it and its action space seeded, so the same seed gives the same
    episodes (the next ``reset()`` without a seed continues that stream). ``ant_obs`` only matters for ant (see
    the module docstring). Unknown family, version or ``ant_obs`` raise ``ValueError`` listing the valid ones.
    """
    _check(family, version, ant_obs)
    kwargs = _ant_kwargs(version, ant_obs) if family == "ant" else {}
    env = gym.make(env_id(family, version), max_episode_steps=MAX_EPISODE_STEPS, **kwargs)
    if family == "ant" and ant_obs == "d4rl":
        assert env.observation_space.shape == (_ANT_BASE_DIM,), env.observation_space
        env = _ZeroContactForces(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
