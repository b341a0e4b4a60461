"""The task ``--env`` names, parsed once (:func:`resolve_task`, ``Config.task``) and handed downstream: its dataset
(a D4RL name or a Minari id), family and kind, where its data comes from when no ``--dataset`` is given, and the env
that runs it."""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

from opt_fast import envs
from opt_fast.data.names import ANTMAZE_FAMILY, DatasetName, MinariName, parse_task
from opt_fast.envs.antmaze import env_key


@dataclass(frozen=True)
class Task:
    name: DatasetName | MinariName
    """The dataset ``--env`` names (``hopper-medium-replay-v2``, ``minari:D4RL/door/human-v2``)."""

    @property
    def family(self) -> str:
        """hopper, walker2d, door, antmaze...: the env family, its score references and its presets."""
        return self.name.family

    @property
    def kind(self) -> str:
        """medium-replay, umaze-diverse, human...: the dataset kind, its kappa schedule (and AntMaze's lambda)."""
        return self.name.kind

    @property
    def label(self) -> str:
        """The name run directories and tables use."""
        return self.name.label

    @property
    def data_source(self) -> str:
        """``minari`` (a local Minari dataset) or ``d4rl`` (D4RL's file if it is there, else data generated with
        D4RL's recipe): where :func:`opt_fast.runs.load_training_data` looks without ``--dataset``."""
        return "minari" if isinstance(self.name, MinariName) else "d4rl"

    @property
    def env_name(self) -> str:
        """The env :func:`opt_fast.envs.make_env` builds: the family, or for AntMaze the dataset's maze
        (``antmaze-umaze``), one env per maze."""
        return env_key(self.kind) if self.family == ANTMAZE_FAMILY else self.family

    def make_env(self, version: str = "v5", seed: int | None = None) -> gym.Env:
        """The online / evaluation env of the task (``version``: the gymnasium MuJoCo version)."""
        return envs.make_env(self.env_name, version, seed=seed)


def resolve_task(env: str) -> Task:
    """``--env`` as a :class:`Task`; an unknown name is refused naming the known ones."""
    return Task(parse_task(env))
