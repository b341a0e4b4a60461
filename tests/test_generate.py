import contextlib
import dataclasses
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from opt_fast.data.d4rl import load_dataset
from opt_fast.datagen.mujoco import GENERATION_BUDGETS, describe_budgets, generate, medium_target
from opt_fast.io import load_torch

SMOKE = GENERATION_BUDGETS["smoke"]
KINDS = ("medium-replay", "medium", "expert", "medium-expert")


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an hdf5 file by its path (``infos/qpos``, ``metadata/seed``)."""
    arrays: dict[str, np.ndarray] = {}

    def visit(name: str, node: h5py.HLObject) -> None:
        if isinstance(node, h5py.Dataset):
            arrays[name] = node[()]

    with h5py.File(path, "r") as file:
        file.visititems(visit)
    return arrays


def _data(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if not k.startswith("metadata/")}


def _generate_all(out: Path, **kwargs) -> dict[str, dict[str, np.ndarray]]:
    return {kind: _read(generate(f"hopper-{kind}", out, budget=SMOKE, **kwargs)) for kind in KINDS}


@pytest.fixture(scope="module")
def hopper(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """The four SAC datasets of one smoke run (the SAC run is made once and reused)."""
    out = tmp_path_factory.mktemp("hopper")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        files = _generate_all(out)
    # One plain line per dataset made from the run that missed the target, without Python's warning source line.
    assert "warning: hopper-medium-replay-v2: SAC did not reach the medium target 1078.1" in stderr.getvalue()
    assert "UserWarning" not in stderr.getvalue() and "warnings.warn" not in stderr.getvalue()
    return out, files


def test_layout_keys_shapes_dtypes_and_metadata(hopper):
    out, files = hopper
    data = files["medium"]
    n = SMOKE.rows
    expected = {
        "observations": ((n, 11), np.float32), "next_observations": ((n, 11), np.float32),
        "actions": ((n, 3), np.float32), "rewards": ((n,), np.float32), "terminals": ((n,), np.bool_),
        "timeouts": ((n,), np.bool_), "infos/action_log_probs": ((n,), np.float32),
        "infos/qpos": ((n, 6), np.float32), "infos/qvel": ((n, 6), np.float32),
    }
    assert set(_data(data)) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert data[key].shape == shape and data[key].dtype == dtype, key
    meta = {k.removeprefix("metadata/"): v for k, v in data.items() if k.startswith("metadata/")}
    assert meta["generator"] == b"opt-fast" and meta["algorithm"] == b"SAC"
    assert meta["env_id"] == b"Hopper-v5" and meta["env_version"] == b"v5"
    assert meta["dataset_id"] == b"hopper-medium-v2" and meta["budget"] == b"smoke" and meta["seed"] == 0
    assert meta["medium_target"] == pytest.approx(3234.3 / 3) == medium_target("hopper")
    assert not meta["medium_target_reached"]
    assert set(json.loads(meta["package_versions"])) == {"opt-fast", "torch", "gymnasium", "mujoco", "numpy"}
    assert isinstance(meta["generator_version"], bytes)
    behaviour = json.loads(meta["behavior_returns"])
    ends = np.flatnonzero(data["terminals"] | data["timeouts"])
    returns = [chunk.sum() for chunk in np.split(data["rewards"].astype(np.float64), ends + 1)[:-1]]
    assert behaviour["episodes"] == len(returns) > 0
    assert behaviour["mean"] == pytest.approx(np.mean(returns)) and behaviour["max"] == pytest.approx(max(returns))
    assert (out / "hopper_medium-v2.hdf5").is_file()
    assert {p.name for p in (out / "_work" / "hopper-v5-seed0-smoke").iterdir()} == {
        "budget.json", "checkpoint.pt", "medium_policy.pt", "expert_policy.pt"}


def _healthy_hopper(obs: np.ndarray) -> np.ndarray:
    """Hopper-v5's health test on an observation (z = obs[0], angle = obs[1], the rest = obs[1:])."""
    return (np.abs(obs[:, 1:]) < 100).all(axis=1) & (obs[:, 0] > 0.7) & (np.abs(obs[:, 1]) < 0.2)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_chain_and_terminals_are_true_terminations(hopper, kind):
    data = hopper[1][kind]
    terminals, timeouts = data["terminals"], data["timeouts"]
    assert terminals.any() and not (terminals & timeouts).any()
    # Terminal exactly where the next state is unhealthy (hopper episodes here are far shorter than 1000 steps).
    np.testing.assert_array_equal(terminals, ~_healthy_hopper(data["next_observations"]))
    assert not timeouts.any()
    inside = ~(terminals | timeouts)[:-1]
    np.testing.assert_array_equal(data["observations"][1:][inside], data["next_observations"][:-1][inside])
    # infos/qpos, infos/qvel describe s_i: hopper's observation is qpos[1:] and clip(qvel, -10, 10).
    np.testing.assert_allclose(data["observations"][:, :5], data["infos/qpos"][:, 1:], atol=1e-6)
    np.testing.assert_allclose(data["observations"][:, 5:], np.clip(data["infos/qvel"], -10, 10), atol=1e-6)
    assert (np.abs(data["actions"]) < 1).all()


def test_timeouts_mark_the_1000_step_cuts(tmp_path):
    budget = dataclasses.replace(SMOKE, name="cheetah", rows=2500)
    data = _read(generate("halfcheetah-random", tmp_path, budget=budget))
    assert data["metadata/algorithm"] == b"uniform random actions"
    assert "metadata/medium_target" not in data
    np.testing.assert_array_equal(np.flatnonzero(data["timeouts"]), [999, 1999])  # the last episode is unfinished
    assert not data["terminals"].any()
    np.testing.assert_allclose(data["infos/action_log_probs"], -6 * np.log(2.0))
    assert data["actions"].min() >= -1 and data["actions"].max() <= 1 and data["actions"].std() > 0.5


def test_medium_replay_is_the_sac_replay_up_to_the_medium_snapshot(hopper):
    out, files = hopper
    replay = files["medium-replay"]
    step = int(replay["metadata/medium_policy_step"])
    assert len(replay["rewards"]) == step < SMOKE.sac_steps
    assert replay["terminals"][-1] or replay["timeouts"][-1]  # the snapshot is taken at an episode end
    checkpoint = load_torch(out / "_work" / "hopper-v5-seed0-smoke" / "checkpoint.pt")
    rows = checkpoint["rows"]["replay"]
    assert len(rows["obs"]) == SMOKE.sac_steps
    np.testing.assert_array_equal(replay["observations"], rows["obs"][:step].numpy())
    np.testing.assert_array_equal(replay["actions"], rows["action"][:step].numpy())
    best = max(checkpoint["evals"], key=lambda e: e[1])
    assert (step, replay["metadata/medium_policy_return"]) == best


def test_medium_expert_is_medium_cut_at_its_last_episode_end_then_expert(hopper):
    files = hopper[1]
    medium, expert, both = files["medium"], files["expert"], files["medium-expert"]
    cut = int(np.flatnonzero(medium["terminals"] | medium["timeouts"])[-1]) + 1
    assert cut < len(medium["rewards"])  # the smoke medium data end inside an episode
    for key in _data(both):
        np.testing.assert_array_equal(both[key], np.concatenate([medium[key][:cut], expert[key]]), err_msg=key)
    assert files["expert"]["metadata/expert_policy_step"] == SMOKE.sac_steps


def test_same_seed_same_files_other_seed_differs(hopper, tmp_path):
    again = _generate_all(tmp_path / "again")
    for kind in KINDS:
        for key, value in _data(hopper[1][kind]).items():
            np.testing.assert_array_equal(value, again[kind][key], err_msg=f"{kind} {key}")
    other = _read(generate("hopper-medium-replay", tmp_path / "other", seed=1, budget=SMOKE))
    assert other["metadata/seed"] == 1
    n = min(len(other["rewards"]), len(hopper[1]["medium-replay"]["rewards"]))
    assert not np.array_equal(other["observations"][:n], hopper[1]["medium-replay"]["observations"][:n])


def test_a_finished_file_is_kept_and_another_seed_is_not(hopper, monkeypatch, capsys):
    out = hopper[0]
    before = (out / "hopper_medium-v2.hdf5").stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("the SAC run was opened again")

    monkeypatch.setattr("opt_fast.datagen.mujoco._SACRun", must_not_run)
    assert generate("hopper-medium", out, budget=SMOKE) == out / "hopper_medium-v2.hdf5"
    assert "exists (same dataset, env, seed and budget): kept" in capsys.readouterr().out
    assert (out / "hopper_medium-v2.hdf5").stat().st_mtime_ns == before
    with pytest.raises(AssertionError, match="opened again"):
        generate("hopper-medium", out, seed=3, budget=SMOKE)


class _Interrupt(Exception):
    pass


def test_interrupted_generation_resumes_to_the_same_files(hopper, tmp_path):
    steps: list[int] = []

    def crash_at_first_checkpoint(step: int) -> None:
        steps.append(step)
        raise _Interrupt

    with pytest.raises(_Interrupt):
        generate("hopper-medium-expert", tmp_path, budget=SMOKE, on_checkpoint=crash_at_first_checkpoint)
    assert not (tmp_path / "hopper_medium_expert-v2.hdf5").exists()
    first = steps[0]
    assert SMOKE.checkpoint_every <= first < SMOKE.sac_steps
    resumed = _read(generate("hopper-medium-expert", tmp_path, budget=SMOKE, on_checkpoint=steps.append))
    assert steps[1] >= 2 * SMOKE.checkpoint_every  # continued from the checkpoint; a restart would stop at `first`
    for key, value in _data(hopper[1]["medium-expert"]).items():
        np.testing.assert_array_equal(value, resumed[key], err_msg=key)
    replay = _read(generate("hopper-medium-replay", tmp_path, budget=SMOKE))
    np.testing.assert_array_equal(replay["observations"], hopper[1]["medium-replay"]["observations"])


def test_reached_target_snapshots_at_the_first_eval_reaching_it(tmp_path, capsys):
    # Any hopper return exceeds a target of 0 (the healthy reward is positive): medium is the first evaluation.
    budget = dataclasses.replace(SMOKE, name="reached", medium_fraction=0.0, sac_steps=400)
    data = _read(generate("hopper-medium-replay", tmp_path, budget=budget))
    assert "did not reach" not in capsys.readouterr().err
    assert data["metadata/medium_target_reached"] and data["metadata/medium_target"] == 0.0
    n = len(data["rewards"])
    assert n == data["metadata/medium_policy_step"]
    assert SMOKE.eval_every <= n < SMOKE.eval_every + 100  # the first episode end after eval_every steps
    checkpoint = load_torch(tmp_path / "_work" / "hopper-v5-seed0-reached" / "checkpoint.pt")
    assert checkpoint["expert"] is None and len(checkpoint["rows"]["replay"]["obs"]) == n  # training stopped there


def test_loader_labels_the_file_generated(hopper):
    dataset = load_dataset(hopper[0] / "hopper_medium_replay-v2.hdf5")
    assert dataset.source == "generated"
    assert dataset.name is not None and dataset.name.d4rl_id == "hopper-medium-replay-v2"
    assert len(dataset) == len(hopper[1]["medium-replay"]["rewards"]) - 1  # qlearning_dataset drops the last row


def test_bad_requests_raise(tmp_path):
    with pytest.raises(ValueError, match="cannot generate door-cloned-v1"):
        generate("door-cloned", tmp_path, budget=SMOKE)
    with pytest.raises(ValueError, match="cannot generate hopper-full-replay-v2"):
        generate("hopper-full-replay", tmp_path, budget=SMOKE)
    with pytest.raises(ValueError, match="v2 layout"):
        generate("hopper-medium-v0", tmp_path, budget=SMOKE)
    with pytest.raises(ValueError, match="valid budgets: paper, study, quick, smoke"):
        generate("hopper-medium", tmp_path, budget="huge")
    with pytest.raises(ValueError, match="valid versions: v4, v5"):
        generate("hopper-random", tmp_path, budget=SMOKE, env_version="v3")
    with pytest.raises(ValueError, match="rows must be >= 1"):
        dataclasses.replace(SMOKE, rows=0)


def test_work_directory_of_another_budget_is_refused(hopper):
    changed = dataclasses.replace(SMOKE, sac_steps=SMOKE.sac_steps + 1)
    with pytest.raises(ValueError, match="budget.json: the SAC run there used budget"):
        generate("hopper-medium", hopper[0], budget=changed)


def test_describe_budgets_lists_presets():
    text = describe_budgets()
    assert "paper: SAC up to 1,000,000 steps, 1,000,000 rows" in text
    assert "quick:" in text and "smoke:" in text


def test_data_compare_puts_generated_data_beside_d4rls_statistics(hopper, capsys, monkeypatch, tmp_path):
    """``opt-fast data compare``: our file's rows, episodes and returns from the file itself, D4RL's published row
    beneath it, and where the medium policy came from (here: the smoke budget misses the target)."""
    from opt_fast import cli
    from opt_fast.data.d4rl import dataset_info

    out, files = hopper
    path = out / "hopper_medium_replay-v2.hdf5"
    assert cli.main(["data", "compare", str(path)]) == 0
    table = capsys.readouterr().out.splitlines()
    info = dataset_info(path)
    rewards = files["medium-replay"]["rewards"]
    assert info["rows"] == len(rewards)
    ours = next(line for line in table if line.startswith("| hopper-medium-replay-v2 | ours (generated) |"))
    assert f"| {len(rewards):,} | {info['episodes']:,} | {info['episode_return']['mean']:,.1f} |" in ours
    assert "(target 1078: NOT reached)" in ours
    d4rl = table[table.index(ours) + 1]
    assert d4rl == "| | D4RL | 402,000 | 2,041 | 467.3 | -1.4 | 3,192.9 | |"
    monkeypatch.setenv("OPT_FAST_DATA_DIR", str(tmp_path))
    assert cli.main(["data", "compare", "walker2d-medium-replay", "--budget", "smoke"]) == 2
    assert "no such dataset file" in capsys.readouterr().err
