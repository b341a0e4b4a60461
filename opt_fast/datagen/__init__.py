"""Datasets made with D4RL's recipes, and the behaviour policies they need (above the agents and the envs, below the
pipeline; the data files themselves are read by :mod:`opt_fast.data`):

- :mod:`~opt_fast.datagen.mujoco`: locomotion data from a SAC behaviour policy (random, medium, medium-replay, expert,
  medium-expert);
- :mod:`~opt_fast.datagen.adroit`: Adroit data from the DAPG release;
- :mod:`~opt_fast.datagen.antmaze`: AntMaze data from a goal-reaching ant steered through the maze.
"""
from __future__ import annotations

from pathlib import Path

from opt_fast.data.names import ADROIT_FAMILIES, ANTMAZE_FAMILY


def generate_data(name, out: Path, seed: int, budget: str, env_version: str, adroit_data: str | None = None,
                  policy_steps: int | None = None) -> Path:
    """Make a dataset with D4RL's recipe: MuJoCo (SAC), Adroit (DAPG release) or AntMaze (goal-reaching ant)."""
    if name.family in ADROIT_FAMILIES:
        from opt_fast.datagen import adroit

        return adroit.generate(name.d4rl_id, out, adroit_data, seed=seed, budget=budget)
    if name.family == ANTMAZE_FAMILY:
        from opt_fast.datagen import antmaze

        return antmaze.generate(name.d4rl_id, out, seed=seed, budget=budget, sac_steps=policy_steps)
    from opt_fast.datagen import mujoco

    return mujoco.generate(name.d4rl_id, out, seed=seed, budget=budget, env_version=env_version)
