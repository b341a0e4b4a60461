"""D4RL names and file names, hdf5 loading and validation, qlearning_dataset semantics on hand-made arrays."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from opt_fast.data import (
    D4RL_FILES,
    DatasetName,
    check_env_compatible,
    dataset_info,
    load_dataset,
    load_hdf5,
    parse_dataset_name,
    qlearning_dataset,
    read_metadata,
    resolve_dataset_path,
)
from opt_fast.data.names import name_from_filename


def rows_dataset(n: int, terminals: list[int], timeouts: list[int] | None) -> dict[str, np.ndarray]:
    """Row i has observation [i, -i], action [10 + i], reward 100 + i, so every output row names its source row."""
    i = np.arange(n, dtype=np.float64)
    raw = {
        "observations": np.stack([i, -i], axis=1),
        "actions": (10 + i)[:, None],
        "rewards": 100 + i,
        "terminals": np.isin(np.arange(n), terminals),
    }
    if timeouts is not None:
        raw["timeouts"] = np.isin(np.arange(n), timeouts)
    return raw


def assert_rows(out: dict[str, np.ndarray], rows: list[int], terminal_rows: list[int]) -> None:
    rows_array = np.array(rows)
    np.testing.assert_array_equal(out["observations"][:, 0], rows_array)
    np.testing.assert_array_equal(out["next_observations"][:, 0], rows_array + 1)
    np.testing.assert_array_equal(out["next_observations"][:, 1], -(rows_array + 1))
    np.testing.assert_array_equal(out["actions"][:, 0], 10 + rows_array)
    np.testing.assert_array_equal(out["rewards"], 100 + rows_array)
    np.testing.assert_array_equal(out["terminals"], np.isin(rows_array, terminal_rows))


# ---------------------------------------------------------------- qlearning_dataset


def test_timeouts_dropped_terminals_kept_last_row_dropped() -> None:
    out = qlearning_dataset(rows_dataset(6, terminals=[1], timeouts=[3]))
    assert_rows(out, rows=[0, 1, 2, 4], terminal_rows=[1])


def test_row_both_terminal_and_timeout_is_dropped() -> None:
    out = qlearning_dataset(rows_dataset(5, terminals=[2], timeouts=[2]))
    assert_rows(out, rows=[0, 1, 3], terminal_rows=[])


def test_terminate_on_end_keeps_timeout_rows_with_stored_flag() -> None:
    # d4rl keeps the row but does not set its terminal (next_observations crosses into the next episode).
    out = qlearning_dataset(rows_dataset(6, terminals=[1], timeouts=[3]), terminate_on_end=True)
    assert_rows(out, rows=[0, 1, 2, 3, 4], terminal_rows=[1])


def test_without_timeouts_drops_rows_at_d4rl_step_count() -> None:
    # T = 3: d4rl's step count runs 0 1 [2] 0 1(terminal) 1 [2] 0 1 (restarting at 1 after a terminal); rows at
    # count 2 (bracketed) are dropped, as is the last row 9.
    out = qlearning_dataset(rows_dataset(10, terminals=[4], timeouts=None), max_episode_steps=3)
    assert_rows(out, rows=[0, 1, 3, 4, 5, 7, 8], terminal_rows=[4])


def test_without_timeouts_terminal_at_step_limit_is_dropped_and_count_restarts_at_zero() -> None:
    # T = 3: counts 0 1 [2, terminal] 0 1 [2] 0 (7 is the last row).
    out = qlearning_dataset(rows_dataset(8, terminals=[2], timeouts=None), max_episode_steps=3)
    assert_rows(out, rows=[0, 1, 3, 4, 6], terminal_rows=[])


def test_without_timeouts_terminate_on_end_keeps_every_row_but_last() -> None:
    out = qlearning_dataset(rows_dataset(8, terminals=[2], timeouts=None), terminate_on_end=True, max_episode_steps=3)
    assert_rows(out, rows=list(range(7)), terminal_rows=[2])


def test_without_timeouts_long_episodes_default_horizon() -> None:
    # Episodes shorter than 1000 steps never reach the limit: only the last row goes.
    out = qlearning_dataset(rows_dataset(40, terminals=[9, 19, 29], timeouts=None))
    assert_rows(out, rows=list(range(39)), terminal_rows=[9, 19, 29])


def test_output_dtypes_and_shapes_match_d4rl() -> None:
    out = qlearning_dataset(rows_dataset(6, terminals=[1], timeouts=[3]))
    assert set(out) == {"observations", "actions", "next_observations", "rewards", "terminals"}
    for key in ("observations", "actions", "next_observations", "rewards"):
        assert out[key].dtype == np.float32, key
    assert out["terminals"].dtype == bool
    assert out["observations"].shape == (4, 2) and out["actions"].shape == (4, 1) and out["rewards"].shape == (4,)


@pytest.mark.parametrize("n", [0, 1])
def test_too_short_dataset_gives_empty_transitions_with_dims(n: int) -> None:
    out = qlearning_dataset(rows_dataset(n, terminals=[], timeouts=[]))
    assert out["observations"].shape == (0, 2) and out["next_observations"].shape == (0, 2)
    assert out["actions"].shape == (0, 1) and out["terminals"].shape == (0,)


def test_qlearning_input_errors() -> None:
    raw = rows_dataset(5, terminals=[], timeouts=None)
    del raw["actions"]
    with pytest.raises(ValueError, match="missing key 'actions'"):
        qlearning_dataset(raw)
    raw = rows_dataset(5, terminals=[], timeouts=None)
    raw["rewards"] = raw["rewards"][:, None]
    with pytest.raises(ValueError, match=r"'rewards' has shape \(5, 1\), expected \(N,\)"):
        qlearning_dataset(raw)
    with pytest.raises(ValueError, match="max_episode_steps must be >= 1"):
        qlearning_dataset(rows_dataset(5, terminals=[], timeouts=None), max_episode_steps=0)


# ---------------------------------------------------------------- load_hdf5 / read_metadata


def write_h5(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, object] | None = None) -> Path:
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            file[key] = value
        for key, value in (attrs or {}).items():
            file.require_group("metadata").attrs[key] = value
    return path


def old_style(n: int = 6) -> dict[str, np.ndarray]:
    """float64 arrays, (N, 1) rewards and float 0/1 flags, as in old D4RL files."""
    raw = rows_dataset(n, terminals=[1], timeouts=[3])
    raw["rewards"] = raw["rewards"][:, None]
    raw["terminals"] = raw["terminals"].astype(np.float64)[:, None]
    raw["timeouts"] = raw["timeouts"].astype(np.float64)
    raw["next_observations"] = raw["observations"] + 0.5
    return raw


def test_load_hdf5_casts_and_squeezes(tmp_path: Path) -> None:
    raw = load_hdf5(write_h5(tmp_path / "d.hdf5", old_style()))
    assert set(raw) == {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations"}
    assert raw["observations"].dtype == np.float32 and raw["next_observations"].dtype == np.float32
    assert raw["rewards"].dtype == np.float32 and raw["rewards"].shape == (6,)
    assert raw["terminals"].dtype == bool and raw["terminals"].shape == (6,)
    np.testing.assert_array_equal(raw["rewards"], [100, 101, 102, 103, 104, 105])
    np.testing.assert_array_equal(raw["terminals"], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(raw["timeouts"], [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(raw["next_observations"][:, 0], np.arange(6) + 0.5)
    # The loaded file gives the same transitions as the in-memory rows.
    assert_rows(qlearning_dataset(raw), rows=[0, 1, 2, 4], terminal_rows=[1])


def test_load_hdf5_optional_keys_absent(tmp_path: Path) -> None:
    raw = rows_dataset(4, terminals=[], timeouts=None)
    assert set(load_hdf5(write_h5(tmp_path / "d.hdf5", raw))) == set(raw)


def test_load_hdf5_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        load_hdf5(tmp_path / "nope.hdf5")


def test_load_hdf5_missing_key(tmp_path: Path) -> None:
    raw = old_style()
    del raw["terminals"]
    with pytest.raises(ValueError, match=r"d\.hdf5: missing key 'terminals'"):
        load_hdf5(write_h5(tmp_path / "d.hdf5", raw))


@pytest.mark.parametrize(
    ("key", "row", "value"), [("observations", 3, np.nan), ("rewards", 4, np.inf), ("actions", 0, -np.inf)]
)
def test_load_hdf5_non_finite(tmp_path: Path, key: str, row: int, value: float) -> None:
    raw = old_style()
    raw[key][row] = value
    raw[key][5] = value  # a later bad row: the message names the first
    with pytest.raises(ValueError, match=rf"d\.hdf5: key '{key}' has NaN or inf values, first at row {row} \(2 rows\)"):
        load_hdf5(write_h5(tmp_path / "d.hdf5", raw))


def test_load_hdf5_float64_overflow_is_non_finite(tmp_path: Path) -> None:
    raw = old_style()
    raw["observations"][2, 1] = 1e300  # finite in the file, inf once cast to float32
    with pytest.raises(ValueError, match="'observations' has NaN or inf values, first at row 2"):
        load_hdf5(write_h5(tmp_path / "d.hdf5", raw))


def test_load_hdf5_length_mismatch(tmp_path: Path) -> None:
    raw = old_style()
    raw["actions"] = raw["actions"][:5]
    with pytest.raises(ValueError, match=r"d\.hdf5: key 'actions' has 5 rows, expected 6"):
        load_hdf5(write_h5(tmp_path / "d.hdf5", raw))


def test_load_hdf5_bad_shapes(tmp_path: Path) -> None:
    raw = old_style()
    raw["actions"] = raw["actions"][:, 0]
    with pytest.raises(ValueError, match=r"key 'actions' has shape \(6,\), expected \(N, dim\)"):
        load_hdf5(write_h5(tmp_path / "a.hdf5", raw))
    raw = old_style()
    raw["next_observations"] = raw["next_observations"][:, :1]
    with pytest.raises(ValueError, match="'next_observations' and 'observations' differ in shape"):
        load_hdf5(write_h5(tmp_path / "b.hdf5", raw))


def test_read_metadata(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "d.hdf5", old_style(), attrs={"generator": "opt-fast 0.1"})
    with h5py.File(path, "a") as file:
        file["metadata/algorithm"] = b"SAC"
        file["metadata/iteration"] = np.int64(42)
        file["metadata/policy/fc0/weight"] = np.ones((3, 2))
    metadata = read_metadata(path)
    assert set(metadata) == {"generator", "algorithm", "iteration", "policy/fc0/weight"}
    assert metadata["generator"] == "opt-fast 0.1" and metadata["algorithm"] == "SAC"
    assert metadata["iteration"] == 42 and type(metadata["iteration"]) is int
    np.testing.assert_array_equal(metadata["policy/fc0/weight"], np.ones((3, 2)))
    assert read_metadata(write_h5(tmp_path / "plain.hdf5", old_style())) == {}


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("typed", "d4rl_id", "filename"),
    [
        ("walker2d-medium-replay", "walker2d-medium-replay-v2", "walker2d_medium_replay-v2.hdf5"),
        ("walker2d-medium-replay-v2", "walker2d-medium-replay-v2", "walker2d_medium_replay-v2.hdf5"),
        ("hopper-random-v0", "hopper-random-v0", "hopper_random.hdf5"),
        ("walker2d-medium-replay-v0", "walker2d-medium-replay-v0", "walker_mixed.hdf5"),
        ("hopper-medium-replay-v0", "hopper-medium-replay-v0", "hopper_mixed.hdf5"),
        ("halfcheetah-medium-expert", "halfcheetah-medium-expert-v2", "halfcheetah_medium_expert-v2.hdf5"),
        ("hopper-full-replay-v1", "hopper-full-replay-v1", "hopper_full_replay-v1.hdf5"),
        (" Ant-Medium ", "ant-medium-v2", "ant_medium-v2.hdf5"),
        ("door-cloned", "door-cloned-v1", "door-cloned-v1.hdf5"),
        ("pen-expert", "pen-expert-v1", "pen-expert-v1.hdf5"),
        ("pen-human-v0", "pen-human-v0", "pen-v0_demos_clipped.hdf5"),
        ("hammer-cloned-v0", "hammer-cloned-v0", "hammer-demos-v0-bc-combined.hdf5"),
        (
            "antmaze-umaze-diverse-v2",
            "antmaze-umaze-diverse-v2",
            "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5",
        ),
        (
            "antmaze-large-play-v0",
            "antmaze-large-play-v0",
            "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse.hdf5",
        ),
    ],
)
def test_parse_names(typed: str, d4rl_id: str, filename: str) -> None:
    name = parse_dataset_name(typed)
    assert name.d4rl_id == d4rl_id == str(name)
    assert name.d4rl_filename == filename
    assert name_from_filename(Path("/any/dir") / filename) == name


def test_name_fields() -> None:
    assert parse_dataset_name("antmaze-umaze-diverse") == DatasetName("antmaze", "umaze-diverse", "v2")
    assert parse_dataset_name("walker2d-medium-replay") == DatasetName("walker2d", "medium-replay", "v2")
    assert parse_dataset_name("relocate-human") == DatasetName("relocate", "human", "v1")


def test_d4rl_filenames_are_unique() -> None:
    assert len(set(D4RL_FILES.values())) == len(D4RL_FILES)
    assert name_from_filename("walker2d_medium_replay-v3.hdf5") is None


@pytest.mark.parametrize(
    ("typed", "suggestion"),
    [
        ("walker2d-medium-replay-v3", "walker2d-medium-replay-v2"),
        ("hoper-medium", "hopper-medium-v2"),
        ("antmaze-umaze-divrse", "antmaze-umaze-diverse-v2"),
        ("halfcheetah-full-replay-v0", "halfcheetah-full-replay-v1"),
    ],
)
def test_unknown_name_suggests_closest(typed: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match="closest known names: .*" + suggestion):
        parse_dataset_name(typed)


def test_unknown_dataclass_fields_raise() -> None:
    with pytest.raises(ValueError, match="unknown D4RL dataset 'hopper-medium-v3'"):
        DatasetName("hopper", "medium", "v3")
    with pytest.raises(ValueError, match="unknown D4RL dataset 'nonsense'"):
        parse_dataset_name("nonsense")


def test_resolve_dataset_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = write_h5(cache / "hopper_medium-v2.hdf5", old_style())
    monkeypatch.setenv("D4RL_DATASET_DIR", str(cache))
    assert resolve_dataset_path("hopper-medium") == cached
    explicit = write_h5(tmp_path / "mine.hdf5", old_style())
    assert resolve_dataset_path("hopper-medium", explicit) == explicit  # explicit path wins
    assert resolve_dataset_path("hopper-medium", cache) == cached  # a directory holds D4RL's file name
    with pytest.raises(FileNotFoundError, match=str(cache / "walker2d_medium-v2.hdf5")):
        resolve_dataset_path("walker2d-medium")
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        resolve_dataset_path("hopper-medium", tmp_path / "missing.hdf5")


def test_resolve_dataset_path_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".d4rl" / "datasets").mkdir(parents=True)
    cached = write_h5(tmp_path / ".d4rl" / "datasets" / "door-cloned-v1.hdf5", old_style())
    assert resolve_dataset_path("door-cloned") == cached


# ---------------------------------------------------------------- load_dataset / info / env check


def test_load_dataset_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_h5(tmp_path / "walker2d_medium_replay-v2.hdf5", old_style())
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    dataset = load_dataset("walker2d-medium-replay")
    assert dataset.name == DatasetName("walker2d", "medium-replay", "v2") and dataset.family == "walker2d"
    # D4RL's file name, but not the 302,000 rows of D4RL's walker2d-medium-replay-v2: not taken for D4RL's data.
    assert dataset.source == "user file walker2d_medium_replay-v2.hdf5"
    assert dataset.path == tmp_path / "walker2d_medium_replay-v2.hdf5"
    assert len(dataset) == 4 and dataset.obs_dim == 2 and dataset.act_dim == 1
    np.testing.assert_array_equal(dataset.next_observations[:, 0], [1, 2, 3, 5])
    np.testing.assert_array_equal(dataset.terminals, [False, True, False, False])


def test_load_dataset_by_path_and_generated_source(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "gen.hdf5", old_style(), attrs={"generator": "opt-fast", "dataset": "hopper-medium-v2"})
    dataset = load_dataset(path)
    assert dataset.source == "generated" and dataset.family == "hopper" and dataset.metadata["generator"] == "opt-fast"
    by_string = load_dataset(str(path))
    np.testing.assert_array_equal(by_string.observations, dataset.observations)
    # A name with an explicit file: the name asked for is kept, but it must be the file's family.
    assert load_dataset("hopper-medium-replay", dataset_path=path).name == DatasetName("hopper", "medium-replay", "v2")
    with pytest.raises(ValueError, match="gen.hdf5 holds hopper-medium-v2 data, not ant data as ant-medium-v2 needs"):
        load_dataset("ant-medium", dataset_path=path)
    unnamed_path = write_h5(tmp_path / "other.hdf5", old_style())
    unnamed = load_dataset(unnamed_path)
    assert unnamed.name is None and unnamed.family is None and unnamed.source == "user file other.hdf5"
    assert load_dataset("ant-medium", dataset_path=unnamed_path).family == "ant"


def test_load_dataset_no_timeouts_uses_max_episode_steps(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "d.hdf5", rows_dataset(10, terminals=[4], timeouts=None))
    np.testing.assert_array_equal(load_dataset(path, max_episode_steps=3).observations[:, 0], [0, 1, 3, 4, 5, 7, 8])
    assert len(load_dataset(path)) == 9


def test_load_dataset_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hopper_medium-v2.hdf5"):
        load_dataset("hopper-medium")
    with pytest.raises(FileNotFoundError, match="absent.hdf5"):
        load_dataset(tmp_path / "absent.hdf5")
    with pytest.raises(ValueError, match="closest known names: hopper-medium-v2"):
        load_dataset("hoppr-medium")


def test_check_env_compatible(tmp_path: Path) -> None:
    dataset = load_dataset(write_h5(tmp_path / "ant_medium-v2.hdf5", old_style()))
    check_env_compatible(dataset, obs_dim=2, act_dim=1)
    expected = "ant-medium-v2 .* observations of size 2 and actions of size 1, but the environment has 105 and 1"
    with pytest.raises(ValueError, match=expected):
        check_env_compatible(dataset, obs_dim=105, act_dim=1)
    with pytest.raises(ValueError, match="environment has 2 and 8"):
        check_env_compatible(dataset, obs_dim=2, act_dim=8)


def test_dataset_info(tmp_path: Path) -> None:
    raw = rows_dataset(7, terminals=[2], timeouts=[5])
    raw["rewards"] = np.arange(1.0, 8.0)  # episodes: rows 0-2 (1+2+3), 3-5 (4+5+6), 6 unfinished (7)
    path = write_h5(tmp_path / "hopper_medium-v2.hdf5", raw, attrs={"algorithm": "SAC"})
    with h5py.File(path, "a") as file:
        file["metadata/policy/w"] = np.zeros((4, 4))
    info = dataset_info(path)
    assert info["dataset"] == "hopper-medium-v2" and info["source"] == "user file hopper_medium-v2.hdf5" and info["path"] == str(path)
    assert dataset_info("hopper-medium", dataset_path=tmp_path) == info
    assert (info["rows"], info["transitions"], info["episodes"]) == (7, 5, 3)
    assert (info["terminals"], info["timeouts"], info["obs_dim"], info["act_dim"]) == (1, 1, 2, 1)
    assert info["episode_length"] == pytest.approx({"mean": 7 / 3, "std": np.std([3, 3, 1]), "min": 1, "max": 3})
    assert info["episode_return"] == pytest.approx({"mean": 28 / 3, "std": np.std([6, 15, 7]), "min": 6, "max": 15})
    span = 3234.3 + 20.272305
    assert info["normalized_return"]["max"] == pytest.approx(100 * (15 + 20.272305) / span)
    assert info["metadata"] == {"algorithm": "SAC", "policy/w": "array(4, 4) float64"}


def test_dataset_info_without_timeouts_counts_step_limit_episodes(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "d.hdf5", rows_dataset(10, terminals=[4], timeouts=None))
    info = dataset_info(path, max_episode_steps=3)
    # Counts 0 1 [2] 0 1(terminal) 1 [2] 0 1 [2]: episodes end at rows 2, 4, 6 and 9.
    assert (info["episodes"], info["transitions"], info["timeouts"]) == (4, 7, None)
    assert info["episode_length"] == pytest.approx({"mean": 2.5, "std": 0.5, "min": 2, "max": 3})
    assert info["dataset"] is None and info["normalized_return"] is None
