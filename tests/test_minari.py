"""Minari datasets written by ``minari.create_dataset_from_buffers``: transitions, Dict observations, reference
scores, clear errors for bad data, and a few training steps through the CLI."""
import json

import gymnasium as gym
import numpy as np
import pytest

from opt_fast import cli
from opt_fast.data.minari import load_minari
from opt_fast.data.names import parse_task

minari = pytest.importorskip("minari")
# minari makes the dataset's env to record its spec; AntMaze v4 is the version its D4RL datasets use.
pytestmark = pytest.mark.filterwarnings("ignore:.*AntMaze_UMaze-v4 is out of date:DeprecationWarning")
from minari.data_collector.episode_buffer import EpisodeBuffer  # noqa: E402


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def box_episodes(lengths, obs_dim=39, act_dim=28, seed=0, terminal_last=False):
    rng = np.random.default_rng(seed)
    episodes = []
    for i, steps in enumerate(lengths):
        terminations = np.zeros(steps, dtype=bool)
        terminations[-1] = terminal_last
        episodes.append(EpisodeBuffer(
            id=i, observations=rng.normal(size=(steps + 1, obs_dim)).astype(np.float32),
            actions=rng.uniform(-1, 1, (steps, act_dim)).astype(np.float32), rewards=rng.normal(size=steps),
            terminations=terminations, truncations=~terminations & (np.arange(steps) == steps - 1)))
    return episodes


def write(dataset_id, episodes, **kwargs):
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    env = "AntMaze_UMaze-v4" if "antmaze" in dataset_id else "AdroitHandDoor-v1"
    with pytest.warns(UserWarning):  # minari asks for authors, descriptions... of test data
        minari.create_dataset_from_buffers(dataset_id, episodes, env=env, algorithm_name="test", **kwargs)


def test_box_dataset_transitions_and_its_own_reference_scores(capsys):
    episodes = box_episodes([5, 3], terminal_last=True)
    write("D4RL/door/tiny-v0", episodes, ref_min_score=-10.0, ref_max_score=90.0)
    data = load_minari("D4RL/door/tiny-v0")
    assert len(data) == 8 and data.source == "minari"
    first = episodes[0]
    np.testing.assert_allclose(data.observations[:5], first.observations[:-1])
    np.testing.assert_allclose(data.next_observations[:5], first.observations[1:])  # the final one included
    np.testing.assert_allclose(data.actions[5:], episodes[1].actions)
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 0, 1, 0, 0, 1])
    assert (data.metadata["ref_min_score"], data.metadata["ref_max_score"]) == (-10.0, 90.0)
    assert "from the dataset's Minari metadata: min -10, max 90" in capsys.readouterr().err


def test_dict_observations_are_flattened_and_d4rl_scores_fill_in(capsys):
    rng = np.random.default_rng(1)
    obs = {"achieved_goal": rng.normal(size=(5, 2)), "desired_goal": rng.normal(size=(5, 2)),
           "observation": rng.normal(size=(5, 27))}
    write("D4RL/antmaze/umaze-v1", [EpisodeBuffer(id=0, observations=obs, actions=rng.uniform(-1, 1, (4, 8)),
                                                  rewards=np.zeros(4), terminations=np.zeros(4, dtype=bool),
                                                  truncations=np.zeros(4, dtype=bool))])
    data = load_minari("D4RL/antmaze/umaze-v1")
    assert data.obs_dim == 29
    np.testing.assert_allclose(data.observations[:, :2], obs["achieved_goal"][:-1], rtol=1e-6)
    np.testing.assert_allclose(data.next_observations[:, 2:], obs["observation"][1:], rtol=1e-6)
    assert (data.metadata["ref_min_score"], data.metadata["ref_max_score"]) == (0.0, 1.0)
    assert "D4RL's table for antmaze" in capsys.readouterr().err


def test_unsupported_minari_version_is_named(minari_root):
    write("D4RL/door/old-v0", box_episodes([3]))
    path = minari_root / "D4RL/door/old-v0/data/metadata.json"
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "minari_version": "0.3.1"}))
    with pytest.raises(ValueError, match=r"minari 0\.3\.1, which the installed minari .* cannot read") as err:
        load_minari("D4RL/door/old-v0")
    assert str(path) in str(err.value) and "0.5.4" in str(err.value)
    path.write_text(json.dumps({k: v for k, v in metadata.items() if k != "minari_version"}))
    with pytest.raises(ValueError, match="missing key 'minari_version'"):
        load_minari("D4RL/door/old-v0")


def test_missing_dataset_names_where_it_looked(minari_root):
    with pytest.raises(FileNotFoundError, match="D4RL/door/human-v2 is not on disk") as err:
        load_minari("D4RL/door/human-v2")
    assert str(minari_root) in str(err.value) and "offline" in str(err.value)


def test_nan_rows_are_named_with_their_episode_and_step():
    episodes = box_episodes([4, 4])
    episodes[1].actions[2, 5] = np.inf
    write("D4RL/door/bad-v0", episodes)
    with pytest.raises(ValueError, match=r"D4RL/door/bad-v0, episode 1: actions has NaN or inf values, first at "
                                         r"step 2 \(1 steps\)"):
        load_minari("D4RL/door/bad-v0")


def test_dict_observations_without_the_expected_keys_are_refused():
    rng = np.random.default_rng(0)
    obs = {"position": rng.normal(size=(3, 2)), "velocity": rng.normal(size=(3, 2))}
    space = gym.spaces.Dict({key: gym.spaces.Box(-np.inf, np.inf, (2,)) for key in obs})
    write("D4RL/antmaze/odd-v0", [EpisodeBuffer(id=0, observations=obs, actions=rng.uniform(-1, 1, (2, 8)),
                                                rewards=np.zeros(2), terminations=np.zeros(2, dtype=bool),
                                                truncations=np.zeros(2, dtype=bool))], observation_space=space)
    with pytest.raises(ValueError, match=r"episode 0: a Dict observation needs keys 'achieved_goal' and "
                                         r"'observation'"):
        load_minari("D4RL/antmaze/odd-v0")


@pytest.mark.parametrize("env,message", [
    ("minari:D4RL/kitchen/complete-v2", "env 'kitchen' is not one opt-fast runs"),
    ("minari:door-human", "not of the form <namespace>/<env>/<dataset>-v<N>"),
    ("door-clone", "closest known names: door-cloned-v1"),
])
def test_unknown_names_are_explained(env, message):
    with pytest.raises(ValueError, match=message):
        parse_task(env)


SMOKE = ["--budget", "smoke", "--hidden", "16,16", "--vae-hidden", "16,16", "--batch-size", "8", "--offline-steps",
         "10", "--vae-steps", "5", "--n-tau", "20", "--n-pretrain", "3", "--online-steps", "30", "--eval-every",
         "1000", "--eval-episodes", "1"]


def test_cli_trains_spot_opt_on_a_minari_dataset(tmp_path, capsys):
    write("D4RL/door/tiny-v0", box_episodes([40, 40]), ref_min_score=-50.0, ref_max_score=50.0)
    rc = cli.main(["train", "--env", "minari:D4RL/door/tiny-v0", "--out", str(tmp_path / "runs"), *SMOKE])
    out = capsys.readouterr().out
    assert rc == 0 and "| SPOT+OPT | D4RL/door/tiny-v0 (minari) |" in out
    (summary,) = (tmp_path / "runs" / "minari-D4RL-door-tiny-v0").glob("opt-*/summary.json")
    assert json.loads(summary.read_text())["reference_scores"] == [-50.0, 50.0]


def test_cli_refuses_a_dataset_of_another_env_size(tmp_path, capsys):
    write("D4RL/door/narrow-v0", box_episodes([10], obs_dim=30))
    rc = cli.main(["train", "--env", "minari:D4RL/door/narrow-v0", "--out", str(tmp_path / "runs"), *SMOKE])
    assert rc == 2 and "observations of size 30 and actions of size 28, but the environment has 39 and 28" in \
        capsys.readouterr().err
