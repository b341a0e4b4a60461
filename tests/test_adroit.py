"""Adroit: DAPG policy files, D4RL horizons, dataset recipes in D4RL's layout, clear errors, env state for resume,
and SPOT / SPOT+OPT through every phase on a door dataset."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from opt_fast import provenance
from opt_fast.datagen import adroit
from opt_fast.envs import adroit as adroit_env
from opt_fast.config import Config, resolve
from opt_fast.data.d4rl import load_dataset
from opt_fast.envs.seed_envs import get_env_state, set_env_state
from opt_fast.pipeline import open_run

DAPG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "adroit"
needs_dapg = pytest.mark.skipif(not (DAPG / adroit.DEMOS_FILE).is_file(), reason="DAPG release not in ../shared/data")


def write_policy(path: Path, **replace) -> None:
    """A 2-layer policy: obs 2 -> tanh hidden 2 -> act 1."""
    arrays = dict(in_shift=np.array([1.0, -1.0]), in_scale=np.array([2.0, 0.5]), W0=np.array([[1.0, 0.0], [0.5, -1.0]]),
                  b0=np.array([0.0, 0.1]), W1=np.array([[2.0, -1.0]]), b1=np.array([0.3]), out_shift=np.array([0.1]),
                  out_scale=np.array([0.5]), log_std=np.array([-1.0]), n_layers=np.array(2))
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def test_policy_mean_and_sample_match_hand_computation(tmp_path):
    write_policy(tmp_path / "p.npz")
    policy = adroit.GaussianMLPPolicy.from_npz(tmp_path / "p.npz")
    obs = np.array([3.0, 0.0])
    x = np.array([(3.0 - 1.0) / (2.0 + 1e-8), (0.0 + 1.0) / (0.5 + 1e-8)])
    h = np.tanh(np.array([x[0], 0.5 * x[0] - x[1] + 0.1]))
    expected = (2.0 * h[0] - h[1] + 0.3) * 0.5 + 0.1
    np.testing.assert_allclose(policy.mean(obs), [expected])
    np.testing.assert_allclose(policy.mean(np.stack([obs, obs])), [[expected], [expected]])
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    sample = policy.sample(obs, rng)
    np.testing.assert_allclose(sample, np.clip(expected + np.exp(-1.0) * reference.standard_normal(1), -1, 1))
    assert np.all(np.abs(policy.sample(np.full((500, 2), 40.0), rng)) <= 1.0)


@pytest.mark.parametrize("replace,message", [({"W1": None}, r"missing keys \['W1'\]"),
                                            ({"W1": np.ones((1, 3))}, r"W1 has shape \(1, 3\), expected \(1, 2\)"),
                                            ({"b0": np.array([np.nan, 0.0])}, "NaN or inf")])
def test_bad_policy_files_name_the_file_and_the_problem(tmp_path, replace, message):
    write_policy(tmp_path / "p.npz", **replace)
    with pytest.raises(ValueError, match=message) as err:
        adroit.GaussianMLPPolicy.from_npz(tmp_path / "p.npz")
    assert "p.npz" in str(err.value)
    with pytest.raises(FileNotFoundError, match="--adroit-data"):
        adroit.GaussianMLPPolicy.from_npz(tmp_path / "missing.npz")


@pytest.mark.parametrize("task,obs_dim,act_dim,horizon", [("pen", 45, 24, 100), ("door", 39, 28, 200)])
def test_envs_have_d4rl_horizons_and_sizes(task, obs_dim, act_dim, horizon):
    env = adroit_env.make_env(task, seed=0)
    assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(act_dim))
        assert not terminated
        steps += 1
    assert steps == horizon


def test_env_state_round_trip_includes_the_randomised_door():
    env, other = adroit_env.make_env("door", seed=0), adroit_env.make_env("door", seed=5)
    rng = np.random.default_rng(0)
    for _ in range(7):
        env.step(rng.uniform(-1, 1, 28))
    state = get_env_state(env)
    actions = rng.uniform(-1, 1, (5, 28))
    expected = [env.step(a)[0] for a in actions]
    set_env_state(other, state)  # the other env's door stands elsewhere until its task state is restored
    np.testing.assert_allclose([other.step(a)[0] for a in actions], expected)


@needs_dapg
def test_real_dapg_door_policy_reaches_the_expert_level():
    policy = adroit.GaussianMLPPolicy.from_npz(DAPG / adroit.policy_file("door"))
    env = adroit_env.make_env("door")
    episode = adroit.run_episode(env, lambda obs, t: policy.mean(obs), adroit_env.HORIZONS["door"], {"seed": 0})
    assert episode["rewards"].sum() > 2500  # 3037 in gymnasium-robotics 1.4.2


@needs_dapg
def test_door_human_and_cloned_follow_d4rl_layout(tmp_path):
    # The release's policy and its first three demonstrations (the test replays fewer steps).
    (tmp_path / adroit.policy_file("door")).symlink_to(DAPG / adroit.policy_file("door"))
    with np.load(DAPG / adroit.DEMOS_FILE) as full:
        rows = int(full["episode_lengths"][:3].sum())
        np.savez(tmp_path / adroit.DEMOS_FILE, **{k: full[k][:rows] if k in ("observations", "actions", "rewards")
                                                   else full[k][:3] for k in full.files})
    path = adroit.generate("door-cloned", tmp_path / "out", tmp_path, budget="smoke")
    assert path.name == "door-cloned-v1.hdf5"
    demos = adroit.Demos.from_npz(tmp_path / adroit.DEMOS_FILE)
    n_demo, n_clone = int(demos.episode_lengths.sum()), adroit.BUDGETS["smoke"].cloned_episodes * 200
    with h5py.File(path) as f:
        assert f["metadata/gymnasium_robotics"][()].decode() == provenance.gymnasium_robotics_version()
        assert f["metadata/generator"][()].decode() == "opt_fast.adroit"
        actions, timeouts = f["actions"][()], f["timeouts"][()]
        assert not f["terminals"][()].any() and f["infos/door_body_pos"].shape == (len(actions), 3)
        human_actions = f["actions"][n_clone:n_clone + n_demo]
    # Rollouts of the clone first (200-step episodes), then the demonstrations replayed whole (one copy here).
    assert len(actions) == n_clone + n_demo and np.abs(actions).max() <= 1.0
    ends = np.flatnonzero(timeouts) + 1
    np.testing.assert_array_equal(np.diff(np.concatenate([[0], ends])),
                                  [200] * 3 + list(demos.episode_lengths))
    np.testing.assert_allclose(human_actions, np.clip(demos.actions, -1, 1))
    dataset = load_dataset(path)
    assert dataset.source == "generated" and dataset.name.d4rl_id == "door-cloned-v1"
    assert (dataset.obs_dim, dataset.act_dim) == (39, 28)


@pytest.mark.parametrize("name", ["pen-human", "hammer-cloned", "relocate-human-v1"])
def test_unavailable_human_and_cloned_data_say_how_to_bring_it(tmp_path, name):
    with pytest.raises(ValueError, match="cannot be generated here") as err:
        adroit.generate(name, tmp_path, tmp_path)
    message = str(err.value)
    assert "D4RL_DATASET_DIR" in message and "minari:D4RL/" in message and "door-cloned" in message


def test_missing_dapg_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match="--adroit-data"):
        adroit.generate("door-expert", tmp_path, None)
    with pytest.raises(FileNotFoundError, match="dapg_door_policy.npz"):
        adroit.generate("door-expert", tmp_path, tmp_path / "nowhere")


TINY = dict(offline_steps=20, vae_steps=10, n_tau=20, n_pretrain=5, online_steps=40, eval_every=1000,
            eval_episodes=1, checkpoint_every=1000, hidden=(16, 16), vae_hidden=(16, 16), batch_size=16)


@pytest.fixture(scope="module")
def door_expert(tmp_path_factory):
    if not (DAPG / adroit.policy_file("door")).is_file():
        pytest.skip("DAPG release not in ../shared/data")
    return load_dataset(adroit.generate("door-expert", tmp_path_factory.mktemp("data"), DAPG, budget="smoke"))


@pytest.mark.parametrize("use_opt", [True, False])
def test_spot_and_spot_opt_run_every_phase_on_door(tmp_path, door_expert, use_opt):
    config = resolve(Config(budget="smoke"), {"env": "door-expert", "opt": use_opt, **TINY}, "expert", "door")
    [summary] = open_run(config, tmp_path / "run", door_expert, resume=False).run()
    assert summary["variant"] == ("SPOT+OPT" if use_opt else "SPOT")
    phases = {"offline", "collect", "pretrain", "finetune"} if use_opt else {"offline", "finetune"}
    assert set(summary["phase_scores"]) == phases
    assert summary["env_packages"]["gymnasium-robotics"] == provenance.gymnasium_robotics_version()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["offline_step"] == TINY["offline_steps"] + TINY["vae_steps"]


def test_dataset_of_another_env_size_is_refused(tmp_path, door_expert):
    path = tmp_path / "door-expert-v1.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = door_expert.observations[:50, :38]
        f["actions"] = door_expert.actions[:50]
        f["rewards"] = door_expert.rewards[:50]
        f["terminals"] = np.zeros(50, dtype=bool)
    config = resolve(Config(budget="smoke"), {"env": "door-expert", **TINY}, "expert", "door")
    with pytest.raises(ValueError, match=r"observations of size 38 .* environment has 39"):
        open_run(config, tmp_path / "run", load_dataset(path), resume=False)
