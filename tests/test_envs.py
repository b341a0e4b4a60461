import numpy as np
import pytest

from opt_fast.envs import env_dims, make_env
from opt_fast.envs.locomotion import env_id

pytestmark = pytest.mark.filterwarnings("ignore:.*is out of date.*:DeprecationWarning")


@pytest.mark.parametrize(
    ("family", "version", "ant_obs", "dims"),
    [
        ("hopper", "v5", "d4rl", (11, 3)),
        ("hopper", "v4", "d4rl", (11, 3)),
        ("halfcheetah", "v5", "d4rl", (17, 6)),
        ("walker2d", "v4", "d4rl", (17, 6)),
        ("ant", "v5", "d4rl", (111, 8)),
        ("ant", "v4", "d4rl", (111, 8)),
        ("ant", "v4", "contact", (111, 8)),
        ("ant", "v5", "contact", (105, 8)),
        ("ant", "v5", "plain", (27, 8)),
    ],
)
def test_dims_match_d4rl_and_gymnasium(family, version, ant_obs, dims):
    assert env_dims(family, version, ant_obs) == dims
    env = make_env(family, version, seed=0, ant_obs=ant_obs)
    obs, _ = env.reset()
    assert obs.shape == (dims[0],)
    assert env.action_space.shape == (dims[1],)


def test_d4rl_ant_contact_entries_are_zero_after_steps():
    env = make_env("ant", "v5", seed=1)
    env.reset()
    for _ in range(20):
        obs, *_ = env.step(env.action_space.sample())
    assert np.all(obs[27:] == 0.0)
    assert np.any(obs[:27] != 0.0)


def test_env_id_and_bad_names():
    assert env_id("walker2d", "v4") == "Walker2d-v4"
    assert env_id("halfcheetah") == "HalfCheetah-v5"
    with pytest.raises(ValueError, match="valid families: hopper, halfcheetah, walker2d, ant"):
        make_env("humanoid")
    with pytest.raises(ValueError, match="valid versions: v4, v5"):
        env_id("hopper", "v3")
    with pytest.raises(ValueError, match="valid options: d4rl, contact, plain"):
        make_env("ant", ant_obs="zeros")


def _first_steps(seed: int) -> np.ndarray:
    env = make_env("hopper", seed=seed)
    obs, _ = env.reset()
    rows = [obs]
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        rows.append(obs)
    return np.stack(rows)


def test_same_seed_same_episode_other_seed_differs():
    np.testing.assert_array_equal(_first_steps(3), _first_steps(3))
    assert not np.array_equal(_first_steps(3)[0], _first_steps(4)[0])


def test_time_limit_is_truncation_not_termination():
    env = make_env("halfcheetah", seed=0)  # halfcheetah never terminates, so the limit is what ends it
    env.reset()
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    for step in range(1, 1001):
        _, _, terminated, truncated, _ = env.step(zero)
        assert not terminated
        assert truncated == (step == 1000), step


def test_hopper_falls_by_termination_not_truncation():
    env = make_env("hopper", seed=0)
    env.reset()
    for step in range(1, 1001):  # noqa: B007 (the step the episode ended at is checked below)
        _, _, terminated, truncated, _ = env.step(np.ones(3, dtype=np.float32))
        if terminated or truncated:
            break
    assert terminated and not truncated and step < 1000
