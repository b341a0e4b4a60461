"""Learning that must happen within a small budget: TD3+BC on a small generated hopper dataset.

``tests/data/hopper_medium_replay_tail.hdf5`` holds the last 20k rows (99 episodes, mean return 547, D4RL score
~17) of opt-fast's generated hopper-medium-replay (SAC seed 0 on Hopper-v5, stopped at the medium target).
A random policy scores ~1; 3000 TD3+BC steps reached 12 when this test was written.
"""
from pathlib import Path

import numpy as np
import torch

from opt_fast.agents.common import Batch
from opt_fast.agents.td3 import TD3
from opt_fast.config import Config
from opt_fast.data.d4rl import load_dataset
from opt_fast.data.scores import normalized_score
from opt_fast.envs import make_env
from opt_fast.evaluation import evaluate

DATA = Path(__file__).parent / "data" / "hopper_medium_replay_tail.hdf5"


def test_td3_bc_reaches_a_stated_score_on_generated_hopper_data():
    dataset = load_dataset(DATA)
    assert dataset.source == "generated"
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    agent = TD3(dataset.obs_dim, dataset.act_dim, Config())
    for step in range(3000):
        i = rng.integers(0, len(dataset), 256)
        arrays = dict(obs=dataset.observations[i], action=dataset.actions[i], reward=dataset.rewards[i],
                      next_obs=dataset.next_observations[i], done=dataset.terminals[i].astype(np.float32))
        agent.offline_update(Batch.from_numpy(arrays, "cpu"), step)
    result = evaluate(agent.act, make_env("hopper", "v5"), episodes=3, seed=0)
    assert normalized_score("hopper", result["return_mean"]) >= 8.0
