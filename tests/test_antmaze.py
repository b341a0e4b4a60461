"""AntMaze: D4RL's observation, reward conventions and success, the waypoint controller, the goal reacher's
features and resumable training, and the trainer on a small AntMaze dataset made here."""
import dataclasses
import json
import math

import h5py
import mujoco
import numpy as np
import pytest
import torch

from opt_fast.data.d4rl import flatten_observation
from opt_fast.data.scores import transform_reward
from opt_fast.datagen import antmaze
from opt_fast.envs import antmaze as antmaze_env
from opt_fast.config import Config, resolve
from opt_fast.data.d4rl import load_dataset
from opt_fast.envs.seed_envs import get_env_state, set_env_state
from opt_fast.pipeline import open_run
from opt_fast.io import read_jsonl
from opt_fast.metrics import evaluations


@pytest.mark.parametrize("convention,expected", [("minus_one", [-1.0, 0.0]), ("cql", [-2.0, 2.0]),
                                                 ("calql", [-5.0, 5.0]), ("none", [0.0, 1.0])])
def test_reward_conventions(convention, expected):
    np.testing.assert_allclose(transform_reward(convention, np.array([0.0, 1.0])), expected)


def test_unknown_reward_convention_and_maze_are_named():
    with pytest.raises(ValueError, match="minus_one, cql, calql, none"):
        transform_reward("iql", 1.0)
    with pytest.raises(ValueError, match="antmaze-umaze, antmaze-medium, antmaze-large"):
        antmaze_env.make_env("antmaze-huge")
    with pytest.raises(ValueError, match="valid kinds"):
        antmaze_env.env_key("umaze-play")


def test_dict_observations_flatten_as_d4rl():
    obs = {"achieved_goal": np.array([1.0, 2.0]), "observation": np.arange(27.0), "desired_goal": np.array([9.0, 9.0])}
    np.testing.assert_array_equal(flatten_observation(obs), np.concatenate([[1.0, 2.0], np.arange(27.0)]))
    with pytest.raises(ValueError, match="missing \\['achieved_goal'\\]"):
        flatten_observation({"observation": np.zeros(27)})


def place_ant(env, xy):
    data = env.unwrapped.data
    data.qpos[:2] = xy
    mujoco.mj_forward(env.unwrapped.model, data)


def test_eval_env_counts_success_as_d4rl():
    env = antmaze_env.make_env("antmaze-umaze", seed=0)
    obs, _ = env.reset(seed=0)
    maze = env.unwrapped.maze
    assert obs.shape == (29,) and env.observation_space.shape == (29,)
    np.testing.assert_allclose(obs[:2], env.unwrapped.data.qpos[:2])  # x, y first, then the 27 entries
    np.testing.assert_allclose(obs[2:], np.concatenate([env.unwrapped.data.qpos[2:], env.unwrapped.data.qvel]))
    # D4RL's task: start in cell (1, 1), goal in cell (3, 1), +-1 m of gymnasium-robotics noise.
    assert np.abs(obs[:2] - maze.cell_rowcol_to_xy(np.array([1, 1]))).max() <= 1.0
    assert np.abs(env.goal - maze.cell_rowcol_to_xy(np.array([3, 1]))).max() <= 1.0
    _, reward, terminated, _, _ = env.step(np.zeros(8))
    assert reward == 0.0 and not terminated
    # 0.48 m from the goal: a success under D4RL's radius 0.5 (gymnasium-robotics counts 0.45).
    place_ant(env, env.goal + np.array([0.48, 0.0]))
    obs, reward, terminated, _, info = env.step(np.zeros(8))
    assert 0.45 < np.linalg.norm(obs[:2] - env.goal) <= 0.5
    assert reward == 1.0 and terminated and info["success"]


def test_umaze_episode_lasts_700_steps():
    env = antmaze_env.make_env("antmaze-umaze", seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.zeros(8))
        done, steps = terminated or truncated, steps + 1
    assert steps == 700


def test_env_state_round_trip_includes_the_goal():
    env, other = antmaze_env.make_env("antmaze-umaze", seed=0), antmaze_env.make_env("antmaze-umaze", seed=9)
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, 8))
    state = get_env_state(env)
    actions = rng.uniform(-1, 1, (4, 8))
    expected = [env.step(a) for a in actions]
    set_env_state(other, state)
    got = [other.step(a) for a in actions]
    np.testing.assert_allclose(other.goal, env.goal)
    np.testing.assert_allclose([g[0] for g in got], [e[0] for e in expected])


def test_waypoints_follow_the_shortest_path_through_the_cells():
    env = antmaze_env.make_env("antmaze-umaze", seed=0)
    controller = antmaze.WaypointController(env, lambda features: np.zeros(8))
    maze = env.unwrapped.maze
    goal = maze.cell_rowcol_to_xy(np.array([3, 1])) + 0.2
    # U-maze path (1,1) (1,2) (1,3) (2,3) (3,3) (3,2) (3,1): the next cell's centre, then the goal itself.
    for cell, expected in (((1, 1), (1, 2)), ((1, 3), (2, 3)), ((3, 3), (3, 2)), ((3, 2), (3, 1))):
        np.testing.assert_allclose(controller.waypoint(maze.cell_rowcol_to_xy(np.array(cell)), goal),
                                   maze.cell_rowcol_to_xy(np.array(expected)))
    np.testing.assert_allclose(controller.waypoint(maze.cell_rowcol_to_xy(np.array([3, 1])), goal), goal)


def quat_multiply(a, b):
    w1, v1, w2, v2 = a[0], a[1:], b[0], b[1:]
    return np.concatenate([[w1 * w2 - v1 @ v2], w1 * v2 + w2 * v1 + np.cross(v1, v2)])


def test_goal_features_do_not_depend_on_the_heading():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=29)
    obs[3:7] /= np.linalg.norm(obs[3:7])
    target = obs[:2] + np.array([2.0, -1.0])
    yaw = 1.1
    c, s = math.cos(yaw), math.sin(yaw)
    turned = obs.copy()
    turned[3:7] = quat_multiply(np.array([math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]), obs[3:7])
    turned[15:17] = [c * obs[15] - s * obs[16], s * obs[15] + c * obs[16]]  # world-frame velocity turns too
    turned_target = obs[:2] + np.array([c * 2.0 + s * 1.0, s * 2.0 - c * 1.0])
    np.testing.assert_allclose(antmaze.egocentric_features(turned, turned_target),
                               antmaze.egocentric_features(obs, target), atol=1e-5)
    assert antmaze.egocentric_features(obs, target)[-2:] @ [1, 0] != pytest.approx(2.0)  # not the world offset


def test_goal_reacher_training_resumes_to_the_same_policy(tmp_path):
    small = antmaze.ReacherBudget(sac_steps=0, random_steps=20, episode_steps=10, checkpoint_every=10,
                                  eval_episodes=0)
    evaluated = dataclasses.replace(small, eval_episodes=1)  # evaluation draws nothing from training's RNGs
    straight, record = antmaze.train_goal_reacher(tmp_path / "straight", budget=evaluated, sac_steps=50)
    antmaze.train_goal_reacher(tmp_path / "resumed", budget=small, sac_steps=30)
    resumed, _ = antmaze.train_goal_reacher(tmp_path / "resumed", budget=small, sac_steps=50)
    for (name, a), b in zip(straight.actor.state_dict().items(), resumed.actor.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    saved = json.loads((tmp_path / "straight" / "antmaze-goal-reacher-seed0" / "record.json").read_text())
    assert saved == record and record["steps"] >= 50 and 0.0 <= record["umaze_success_rate"] <= 1.0


@pytest.fixture(scope="module")
def small_umaze(tmp_path_factory):
    """1,200 rows of D4RL's umaze recipe with a random 'goal reacher', in D4RL's layout."""
    rng = np.random.default_rng(0)
    arrays = antmaze.collect("umaze", lambda features: rng.uniform(-1, 1, 8), 1200, seed=0)
    arrays["rewards"][::50] = 1.0  # a few goal rows, so both reward values occur
    path = tmp_path_factory.mktemp("data") / "antmaze-umaze.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f["metadata/generator"] = "test"
    return load_dataset(path)


def test_collected_rows_follow_d4rl_layout(small_umaze):
    with h5py.File(small_umaze.path) as f:
        assert f["observations"].shape == (1200, 29) and f["infos/goal"].shape == (1200, 2)
        np.testing.assert_array_equal(np.flatnonzero(f["timeouts"][()]), [999, 1199])
        assert not f["terminals"][()].any()
        np.testing.assert_allclose(f["observations"][:, :2], f["infos/qpos"][:, :2], rtol=1e-6)


def test_trainer_runs_on_antmaze_with_transformed_rewards(tmp_path, small_umaze):
    tiny = dict(offline_steps=10, vae_steps=5, n_tau=20, n_pretrain=4, online_steps=40, eval_every=1000,
                eval_episodes=1, checkpoint_every=1000, hidden=(16, 16), vae_hidden=(16, 16), batch_size=16)
    config = resolve(Config(budget="smoke"), {"env": "antmaze-umaze", **tiny}, "umaze", "antmaze")
    trainer = open_run(config, tmp_path / "run", small_umaze, resume=False)
    stored = trainer.runs[0].offline_buffer.gather(np.arange(len(small_umaze)))["reward"]
    np.testing.assert_allclose(stored, small_umaze.rewards - 1.0)  # r - 1, SPOT/OPT's convention
    [summary] = trainer.run()
    assert summary["variant"] == "SPOT+OPT" and summary["reference_scores"] == [0.0, 1.0]
    records = evaluations(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    for record in records:
        # One 700-step (or shorter, on success) episode: the score is 100 x its success.
        assert record["score"] == 100.0 * record["return_mean"] and record["return_mean"] in (0.0, 1.0)
    online = trainer.runs[0].online_buffer.gather(np.arange(trainer.runs[0].online_buffer.size))["reward"]
    assert set(np.unique(online)) <= {-1.0, 0.0}


def test_a_reacher_that_never_reaches_the_goal_writes_no_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(antmaze, "train_goal_reacher",
                        lambda *args: (None, {"steps": 400_154, "umaze_success_rate": 0.0}))
    with pytest.raises(ValueError, match=r"antmaze-umaze-v2: the goal-reaching ant \(400,154 SAC steps\) solves no "
                                         r"umaze episode.*--policy-steps N"):
        antmaze.generate("antmaze-umaze", tmp_path, budget="smoke")
    assert not list(tmp_path.iterdir())
