"""The three ways data could silently give wrong results (issue 12): an offline phase reused for other data, a
--dataset of another task family trained in --env's env, and any hdf5 labelled D4RL."""
import json
from pathlib import Path

import h5py
import pytest

from opt_fast import cli, runs
from opt_fast.data.d4rl import data_source, dataset_info, load_dataset
from opt_fast.data.names import D4RL_ROWS, parse_dataset_name
from opt_fast.metrics import reproducible_records
from opt_fast.report import source_label
from test_sweep import write_tiny_dataset

# The smallest protocol through the CLI: seconds per run.
TINY_ARGS = ["--budget", "smoke", "--offline-steps", "40", "--n-tau", "40", "--n-pretrain", "10", "--online-steps",
             "100", "--eval-every", "20", "--eval-episodes", "1", "--checkpoint-every", "15", "--hidden", "16,16",
             "--batch-size", "16", "--utd", "2"]


def only_summary(out: Path, prefix: str) -> dict:
    [path] = out.glob(f"*/{prefix}-smoke-seed0-*/summary.json")
    return json.loads(path.read_text())


def offline_records(out: Path, prefix: str) -> list[dict]:
    [path] = out.glob(f"*/{prefix}-smoke-seed0-*/metrics.jsonl")
    return [r for r in reproducible_records(path) if r["phase"] == "offline"]


@pytest.mark.parametrize("rows_b", [600, 599], ids=["same-size", "other-size"])
def test_an_offline_phase_is_never_reused_for_other_data_at_the_same_path(tmp_path, rows_b):
    data, out, alone = tmp_path / "data.hdf5", tmp_path / "runs", tmp_path / "alone"
    on_data = ["train", "--env", "hopper-random", "--dataset", str(data), *TINY_ARGS]
    args = [*on_data, "--out", str(out)]
    write_tiny_dataset(data, seed=0)
    assert cli.main([*args, "--no-opt"]) == 0
    write_tiny_dataset(data, rows=rows_b, seed=1)  # file B replaces file A under the same path
    # Before: TD3+OPT took A's cached offline phase (same size), or failed on the buffer's capacity (other size).
    assert cli.main(args) == 0
    on_a, on_b = only_summary(out, "td3"), only_summary(out, "opt")
    assert on_a["data_digest"] != on_b["data_digest"] == load_dataset(data).content_digest
    assert offline_records(out, "opt") != offline_records(out, "td3")
    # B's offline phase is the one B trains alone (no cache) from scratch.
    assert cli.main([*on_data, "--out", str(alone)]) == 0
    assert offline_records(out, "opt") == offline_records(alone, "opt")


def test_a_d4rl_file_put_in_place_of_generated_data_gets_its_own_runs(tmp_path, monkeypatch):
    d4rl_dir, out = tmp_path / "d4rl", tmp_path / "runs"
    d4rl_dir.mkdir()
    monkeypatch.setenv("D4RL_DATASET_DIR", str(d4rl_dir))
    monkeypatch.setenv("OPT_FAST_DATA_DIR", str(tmp_path / "generated"))
    generated = runs.generated_path(parse_dataset_name("hopper-random"), "v5", "smoke")
    generated.parent.mkdir(parents=True)
    write_tiny_dataset(generated, seed=0)
    args = ["train", "--env", "hopper-random", "--out", str(out), *TINY_ARGS]
    assert cli.main([*args, "--no-opt"]) == 0
    write_tiny_dataset(d4rl_dir / "hopper_random-v2.hdf5", seed=1, metadata={})  # now found first
    assert cli.main(args) == 0
    on_generated, on_file = only_summary(out, "td3"), only_summary(out, "opt")
    assert on_generated["data_source"] == "generated"
    assert on_file["data_source"] == "user file hopper_random-v2.hdf5"  # D4RL's name, not its 1M rows
    assert on_generated["data_digest"] != on_file["data_digest"]
    assert offline_records(out, "opt") != offline_records(out, "td3")


def test_a_dataset_of_another_family_is_refused_unless_allowed(tmp_path, capsys):
    walker = write_tiny_dataset(tmp_path / "walker2d_medium-v2.hdf5", dims=(17, 6), metadata={})
    args = ["train", "--env", "halfcheetah-medium", "--dataset", str(walker), "--out", str(tmp_path / "runs"),
            *TINY_ARGS, "--no-opt"]
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"opt-fast: error: --dataset {walker} holds walker2d-medium-v2 data, but --env halfcheetah-medium is a "
        "halfcheetah task; pass --allow-env-mismatch to train on it anyway")
    assert not (tmp_path / "runs").exists()
    assert cli.main([*args, "--allow-env-mismatch"]) == 0
    summary = only_summary(tmp_path / "runs", "td3")
    assert summary["dataset"] == "walker2d-medium-v2 (user file walker2d_medium-v2.hdf5)"


def test_the_recorded_env_of_a_generated_file_is_its_family(tmp_path, capsys):
    path = write_tiny_dataset(tmp_path / "mine.hdf5", dims=(17, 6),
                              metadata={"generator": "opt-fast", "env_id": "Walker2d-v5"})
    assert load_dataset(path).family == "walker2d"
    assert cli.main(["train", "--env", "halfcheetah-medium", "--dataset", str(path), *TINY_ARGS]) == 2
    assert "holds walker2d (Walker2d-v5) data, but --env halfcheetah-medium" in capsys.readouterr().err


def test_only_d4rl_names_with_d4rl_sizes_are_labelled_d4rl(tmp_path):
    rows = D4RL_ROWS["hopper-medium-replay-v2"]
    assert rows == (402_000, 402_000)
    real = tmp_path / "real" / "hopper_medium_replay-v2.hdf5"
    real.parent.mkdir()
    write_tiny_dataset(real, rows=402_000, dims=(1, 1), metadata={})
    assert load_dataset(real).source == "d4rl"
    short = write_tiny_dataset(tmp_path / "hopper_medium_replay-v2.hdf5", rows=401_999, dims=(1, 1), metadata={})
    assert dataset_info(short)["source"] == "user file hopper_medium_replay-v2.hdf5"
    renamed = write_tiny_dataset(tmp_path / "hopper.hdf5", rows=402_000, dims=(1, 1), metadata={})
    assert load_dataset(renamed).source == "user file hopper.hdf5"
    assert load_dataset(write_tiny_dataset(tmp_path / "gen.hdf5")).source == "generated"
    # medium-expert: medium cut at its last episode end (under one 1000-step episode lost) plus expert.
    name = Path("walker2d_medium_expert-v2.hdf5")
    assert [data_source(name, {}, n) for n in (2_000_000, 1_999_001, 1_999_000)] == \
        ["d4rl", "d4rl", "user file walker2d_medium_expert-v2.hdf5"]
    assert data_source(Path("hopper_medium-v0.hdf5"), {}, 1_000_000) == "user file hopper_medium-v0.hdf5"  # unchecked


def test_summaries_and_reports_use_the_label(tmp_path):
    path = write_tiny_dataset(tmp_path / "hopper_random-v2.hdf5", metadata={})
    assert cli.main(["train", "--env", "hopper-random", "--dataset", str(path), "--out", str(tmp_path / "runs"),
                     *TINY_ARGS, "--no-opt"]) == 0
    summary = only_summary(tmp_path / "runs", "td3")
    assert summary["data_source"] == "user file hopper_random-v2.hdf5"
    assert summary["dataset"] == "hopper-random-v2 (user file hopper_random-v2.hdf5)"
    assert source_label(summary["data_source"], "smoke") == "user file hopper_random-v2.hdf5, reduced budget (smoke)"
    assert source_label("d4rl", "paper") == "D4RL data, paper budget"


def test_the_content_digest_covers_every_training_array(tmp_path):
    path = write_tiny_dataset(tmp_path / "d.hdf5")
    digest = load_dataset(path).content_digest
    assert load_dataset(path).content_digest == digest  # stable across loads
    with h5py.File(path, "a") as file:
        terminals = file["terminals"][()]
        terminals[3] = not terminals[3]
        file["terminals"][...] = terminals
    assert load_dataset(path).content_digest != digest
    assert len(digest) == 64
