"""Our loader, qlearning_dataset, file names and scores against the real ``d4rl`` package.

Skipped when d4rl is not installed. It installs without its simulators (their imports fail quietly):
``pip install --no-deps d4rl 'gym<0.25' h5py tqdm termcolor click``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType, SimpleNamespace

import h5py
import numpy as np
import pytest

from opt_fast.data import D4RL_FILES, load_hdf5, normalized_score, qlearning_dataset

# Every id of our families that d4rl lists, except ant-random-expert-v0, which no paper uses.
NOT_SUPPORTED = {"ant-random-expert-v0"}
FAMILIES = ("hopper", "halfcheetah", "walker2d", "ant", "antmaze", "pen", "door", "hammer", "relocate")


@pytest.fixture(scope="module")
def d4rl(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gym 0.24 deprecation noise
        patch.setenv("D4RL_SUPPRESS_IMPORT_ERROR", "1")
        # d4rl creates its dataset directory on import: keep it out of the home directory.
        patch.setenv("D4RL_DATASET_DIR", str(tmp_path_factory.mktemp("d4rl_datasets")))
        return pytest.importorskip("d4rl")


def test_file_names_match_d4rl_urls(d4rl: ModuleType) -> None:
    urls = d4rl.infos.DATASET_URLS
    d4rl_ids = {d4rl_id for d4rl_id in urls if d4rl_id.split("-")[0] in FAMILIES} - NOT_SUPPORTED
    assert d4rl_ids == set(D4RL_FILES)
    for d4rl_id, filename in D4RL_FILES.items():
        # d4rl caches a download under the URL's last component (offline_env.filepath_from_url).
        assert os.path.basename(urls[d4rl_id]) == filename, d4rl_id


def test_normalized_scores_match_d4rl(d4rl: ModuleType) -> None:
    returns = np.array([-500.0, 0.0, 0.3, 1.0, 1234.5, 5000.0])
    for d4rl_id in D4RL_FILES:
        expected = [100 * d4rl.get_normalized_score(d4rl_id, r) for r in returns]
        np.testing.assert_allclose(normalized_score(d4rl_id, returns), expected, rtol=1e-12, atol=1e-9, err_msg=d4rl_id)


def write_random_file(path: Path, seed: int, with_timeouts: bool, n: int = 3000) -> Path:
    """Random rows in old D4RL style: float64 arrays, (N, 1) rewards, float flags, some rows terminal and timeout."""
    rng = np.random.default_rng(seed)
    terminals = rng.random(n) < 0.03
    with h5py.File(path, "w") as file:
        file["observations"] = rng.normal(size=(n, 5))
        file["actions"] = rng.uniform(-1, 1, size=(n, 3))
        file["rewards"] = rng.normal(size=(n, 1))
        file["terminals"] = terminals.astype(np.float64)
        if with_timeouts:
            file["timeouts"] = (rng.random(n) < 0.03) | (terminals & (rng.random(n) < 0.3))
    return path


@pytest.mark.parametrize("terminate_on_end", [False, True])
@pytest.mark.parametrize("with_timeouts", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qlearning_dataset_matches_d4rl(
    d4rl: ModuleType, tmp_path: Path, seed: int, with_timeouts: bool, terminate_on_end: bool
) -> None:
    path = write_random_file(tmp_path / "random.hdf5", seed, with_timeouts)
    max_episode_steps = 37  # short, so the step count hits the limit often and sometimes on a terminal row
    obs_dim, act_dim = 5, 3
    # d4rl reads env spaces for its shape checks and env._max_episode_steps when there are no timeouts.
    env = SimpleNamespace(
        observation_space=SimpleNamespace(shape=(obs_dim,)),
        action_space=SimpleNamespace(shape=(act_dim,)),
        _max_episode_steps=max_episode_steps,
    )
    their_raw = d4rl.offline_env.OfflineEnv.get_dataset(env, h5path=str(path))
    our_raw = load_hdf5(path)
    for key in ("observations", "actions", "rewards"):
        np.testing.assert_array_equal(our_raw[key], their_raw[key].astype(np.float32), err_msg=key)
    np.testing.assert_array_equal(our_raw["terminals"], their_raw["terminals"].astype(bool))

    theirs = d4rl.qlearning_dataset(env, dataset=their_raw, terminate_on_end=terminate_on_end)
    ours = qlearning_dataset(our_raw, terminate_on_end=terminate_on_end, max_episode_steps=max_episode_steps)
    assert set(ours) == set(theirs)
    for key, expected in theirs.items():
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)
    # The case is not trivial: rows were dropped (unless kept by terminate_on_end) and terminals kept.
    assert theirs["terminals"].any()
    assert (len(theirs["rewards"]) == 2999) == terminate_on_end
