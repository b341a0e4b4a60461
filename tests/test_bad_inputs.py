"""Bad inputs as a new user makes them (issue 12): each ends in one ``opt-fast: error: ...`` line, exit code 2,
that names the offending file, key or option and what was expected; never a traceback."""
import errno
import importlib.util
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from opt_fast import cli, pipeline
from opt_fast import io as run_files
from test_data_trust import TINY_ARGS
from test_sweep import write_tiny_dataset

pytestmark = pytest.mark.filterwarnings("ignore:.*AntMaze_UMaze-v4 is out of date:DeprecationWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every bad file of the corpus, and a good dataset to pair with bad options."""
    root = tmp_path_factory.mktemp("bad")
    good = write_tiny_dataset(root / "good.hdf5")
    whole = good.read_bytes()
    paths = {"good": good, "dir": root / "a_directory", "root": root}
    paths["dir"].mkdir()
    for name, content in [("half", whole[: len(whole) // 2]), ("random", np.random.default_rng(0).bytes(4096)),
                          ("zero_bytes", b"")]:
        paths[name] = root / f"{name}.hdf5"
        paths[name].write_bytes(content)
    paths["no_rows"] = write_tiny_dataset(root / "no_rows.hdf5", rows=0)
    paths["one_row"] = write_tiny_dataset(root / "one_row.hdf5", rows=1)
    paths["timeouts_only"] = write_tiny_dataset(root / "timeouts_only.hdf5", rows=50)
    with h5py.File(paths["timeouts_only"], "a") as file:
        file["timeouts"][...] = True
    paths["no_actions"] = write_tiny_dataset(root / "no_actions.hdf5")
    with h5py.File(paths["no_actions"], "a") as file:
        del file["actions"]
    paths["nan"] = write_tiny_dataset(root / "nan.hdf5")
    with h5py.File(paths["nan"], "a") as file:
        file["rewards"][7] = np.nan
    paths["short_rewards"] = write_tiny_dataset(root / "short_rewards.hdf5")
    with h5py.File(paths["short_rewards"], "a") as file:
        rewards = file["rewards"][:-1]
        del file["rewards"]
        file["rewards"] = rewards
    paths["walker_dims"] = write_tiny_dataset(root / "walker_sized.hdf5", dims=(17, 6))
    paths["walker_named"] = write_tiny_dataset(root / "walker2d_medium-v2.hdf5", dims=(17, 6), metadata={})
    paths["walker_recorded"] = write_tiny_dataset(root / "recorded.hdf5", dims=(17, 6),
                                                  metadata={"generator": "opt-fast", "env_id": "Walker2d-v5"})
    sweeps = {
        "yaml_syntax": ("sweep.yaml", "datasets: [hopper-random\nseeds: 0-1\n"),
        "json_syntax": ("sweep.json", '{"datasets": ["hopper-random"],\n "seeds": 0-1}'),
        "unknown_key": ("unknown.yaml", "datasets: hopper-random\nseeds: 0\nsead: 3\n"),
        "sweep_seeds": ("seeds.yaml", "datasets: hopper-random\nseeds: 3-1\n"),
        "no_datasets": ("nodata.yaml", "seeds: 0-1\n"),
        "bad_base": ("base.yaml", "datasets: hopper-random\nseeds: 0\nbase: {gamma: 1.5}\n"),
    }
    for key, (name, text) in sweeps.items():
        paths[key] = root / name
        paths[key].write_text(text)
    return paths


def train(files, *options: str) -> list[str]:
    return ["train", "--env", "hopper-random", "--dataset", str(files["good"]), "--out", str(files["root"] / "runs"),
            *TINY_ARGS, *options]


def on_data(files, key: str, env: str = "hopper-random") -> list[str]:
    return ["train", "--env", env, "--dataset", str(files[key]), "--out", str(files["root"] / "runs"), *TINY_ARGS]


def the_error(capsys, args: list[str]) -> str:
    """The error line of ``opt-fast args``: its last line, and its only one from opt-fast (a third-party package
    may print a warning before it)."""
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("opt-fast: ")] == lines[-1:], err
    assert lines[-1].startswith("opt-fast: error: ")
    return lines[-1]


# (case, the command line from the files, what the error line must contain)
CASES = [
    # --- data files
    ("hdf5 cut in half (train)", lambda f: on_data(f, "half"), lambda f: [str(f["half"]), "not a readable HDF5"]),
    ("hdf5 cut in half (data info)", lambda f: ["data", "info", str(f["half"])],
     lambda f: [str(f["half"]), "truncated file"]),
    ("random bytes (train)", lambda f: on_data(f, "random"), lambda f: [str(f["random"]), "not a readable HDF5"]),
    ("random bytes (data info)", lambda f: ["data", "info", str(f["random"])],
     lambda f: [str(f["random"]), "expected a D4RL-layout .hdf5 file"]),
    ("empty file (train)", lambda f: on_data(f, "zero_bytes"), lambda f: [str(f["zero_bytes"]), "not a readable"]),
    ("empty file (data info)", lambda f: ["data", "info", str(f["zero_bytes"])], lambda f: [str(f["zero_bytes"])]),
    ("dataset of no rows", lambda f: on_data(f, "no_rows"),
     lambda f: [str(f["no_rows"]), "no transitions to train on (rows: 0)"]),
    ("dataset of one row", lambda f: on_data(f, "one_row"),
     lambda f: [str(f["one_row"]), "no transitions to train on (rows: 1)", "needs a next row"]),
    ("dataset of timeouts only", lambda f: on_data(f, "timeouts_only"),
     lambda f: [str(f["timeouts_only"]), "rows: 50", "'timeouts'"]),
    ("missing key", lambda f: on_data(f, "no_actions"), lambda f: [str(f["no_actions"]), "missing key 'actions'"]),
    ("NaN reward", lambda f: on_data(f, "nan"), lambda f: [str(f["nan"]), "'rewards'", "NaN or inf", "row 7"]),
    ("rows of different length", lambda f: on_data(f, "short_rewards"),
     lambda f: [str(f["short_rewards"]), "'rewards' has 599 rows, expected 600"]),
    ("sizes of another env", lambda f: on_data(f, "walker_dims"),
     lambda f: [str(f["walker_dims"]), "observations of size 17", "environment has 11 and 3"]),
    ("--dataset DIR", lambda f: on_data(f, "dir"), lambda f: [str(f["dir"]), "is a directory", ".hdf5 file"]),
    ("--dataset missing, no suffix", lambda f: train(f, "--dataset", str(f["root"] / "nothing")),
     lambda f: [f"no dataset file at {f['root'] / 'nothing'}"]),
    ("--dataset missing .hdf5", lambda f: train(f, "--dataset", str(f["root"] / "nothing.hdf5")),
     lambda f: [f"no dataset file at {f['root'] / 'nothing.hdf5'}"]),
    ("--dataset of another family by name", lambda f: on_data(f, "walker_named", "halfcheetah-medium"),
     lambda f: [f"--dataset {f['walker_named']}", "walker2d-medium-v2", "--env halfcheetah-medium",
                "--allow-env-mismatch"]),
    ("--dataset of another family by recorded env", lambda f: on_data(f, "walker_recorded", "halfcheetah-medium"),
     lambda f: [f"--dataset {f['walker_recorded']}", "Walker2d-v5", "--allow-env-mismatch"]),
    ("data info of a missing file", lambda f: ["data", "info", str(f["root"] / "gone.hdf5")],
     lambda f: [f"no dataset file at {f['root'] / 'gone.hdf5'}"]),
    ("data info of an unknown name", lambda f: ["data", "info", "hoppr-medium"],
     lambda f: ["unknown D4RL dataset 'hoppr-medium-v2'", "hopper-medium-v2"]),
    ("data info of a Minari dataset not on disk", lambda f: ["data", "info", "minari:D4RL/door/absent-v2"],
     lambda f: ["Minari dataset D4RL/door/absent-v2 is not on disk", "metadata.json"]),
    ("--env of an unknown dataset", lambda f: train(f, "--env", "hoppr-medium"),
     lambda f: ["unknown D4RL dataset 'hoppr-medium-v2'"]),
    # --- options out of range or malformed
    ("--seed -1", lambda f: train(f, "--seed", "-1"), lambda f: ["--seed must be >= 0, got -1"]),
    ("--seeds 3-1", lambda f: train(f, "--seeds", "3-1"), lambda f: ["--seeds", "'3-1' is empty", "FIRST <= LAST"]),
    ("--seeds 1,1", lambda f: train(f, "--seeds", "1,1"), lambda f: ["--seeds: every seed once, got '1,1'"]),
    ("--seeds a-b", lambda f: train(f, "--seeds", "a-b"), lambda f: ["--seeds", "got 'a-b'"]),
    ("--seed with --seeds", lambda f: train(f, "--seed", "1", "--seeds", "0-1"), lambda f: ["--seed or --seeds"]),
    ("--gamma 1.5", lambda f: train(f, "--gamma", "1.5"), lambda f: ["--gamma must be in [0, 1], got 1.5"]),
    ("--tau -0.1", lambda f: train(f, "--tau", "-0.1"), lambda f: ["--tau must be in [0, 1], got -0.1"]),
    ("--batch-size 0", lambda f: train(f, "--batch-size", "0"), lambda f: ["--batch-size must be > 0, got 0"]),
    ("--hidden 16,0", lambda f: train(f, "--hidden", "16,0"),
     lambda f: ["every entry of --hidden must be > 0, got (16, 0)"]),
    ("--eval-episodes 0", lambda f: train(f, "--eval-episodes", "0"), lambda f: ["--eval-episodes must be > 0"]),
    ("--kappa-start 2", lambda f: train(f, "--kappa-start", "2"), lambda f: ["--kappa-start must be in [0, 1]"]),
    ("--online-gamma 1", lambda f: train(f, "--online-gamma", "1"), lambda f: ["--online-gamma must be in [0, 1)"]),
    ("--actor-lr 0", lambda f: train(f, "--actor-lr", "0"), lambda f: ["--actor-lr must be > 0, got 0.0"]),
    ("--spot-lambda-end 1.5", lambda f: train(f, "--spot-lambda-end", "1.5"),
     lambda f: ["--spot-lambda-end must be in [0, 1]"]),
    ("--n-tau -5", lambda f: train(f, "--n-tau", "-5"), lambda f: ["--n-tau must be >= 0, got -5"]),
    ("--torch-threads -1", lambda f: train(f, "--torch-threads", "-1"), lambda f: ["--torch-threads must be >= 0"]),
    ("--n-tau past --online-steps", lambda f: train(f, "--n-tau", "100"),
     lambda f: ["--n-tau (100) must be smaller than --online-steps (100)"]),
    ("--pretrain-data bogus", lambda f: train(f, "--pretrain-data", "bogus"), lambda f: ["--pretrain-data"]),
    ("--device tpu", lambda f: train(f, "--device", "tpu"), lambda f: ["--device 'tpu' is not a torch device"]),
    ("ablate --set gamma=2", lambda f: ["ablate", "--env", "hopper-random", "--set", "gamma=2", "--dry-run"],
     lambda f: ["--gamma must be in [0, 1], got 2"]),
    ("ablate --set without =", lambda f: ["ablate", "--env", "hopper-random", "--set", "gamma", "--dry-run"],
     lambda f: ["--set 'gamma': expected KEY=VALUE"]),
    ("--log bogus", lambda f: train(f, "--log", "tensorboard,bogus"),
     lambda f: ["--log: unknown sink bogus", "tensorboard, wandb"]),
    # --- sweep files
    ("sweep YAML syntax error", lambda f: ["sweep", str(f["yaml_syntax"]), "--dry-run"],
     lambda f: [f"{f['yaml_syntax']}:2: YAML syntax error"]),
    ("sweep JSON syntax error", lambda f: ["sweep", str(f["json_syntax"]), "--dry-run"],
     lambda f: [f"{f['json_syntax']}:2: JSON syntax error"]),
    ("sweep unknown key", lambda f: ["sweep", str(f["unknown_key"]), "--dry-run"],
     lambda f: [str(f["unknown_key"]), "unknown key(s) ['sead']"]),
    ("sweep seeds 3-1", lambda f: ["sweep", str(f["sweep_seeds"]), "--dry-run"],
     lambda f: [f"{f['sweep_seeds']}: 'seeds'", "'3-1' is empty"]),
    ("sweep without datasets", lambda f: ["sweep", str(f["no_datasets"]), "--dry-run"],
     lambda f: [str(f["no_datasets"]), "missing 'datasets'"]),
    ("sweep base out of range", lambda f: ["sweep", str(f["bad_base"]), "--dry-run"],
     lambda f: ["--gamma must be in [0, 1], got 1.5"]),
    ("sweep file missing", lambda f: ["sweep", str(f["root"] / "absent.yaml"), "--dry-run"],
     lambda f: [str(f["root"] / "absent.yaml")]),
    # --- output directory
    ("--out under a file", lambda f: train(f, "--out", str(f["good"] / "runs")),
     lambda f: ["cannot create the run directory", str(f["good"] / "runs"), "Not a directory"]),
]


@pytest.mark.parametrize("args,expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gets_one_line_naming_it(files, capsys, args, expected):
    line = the_error(capsys, args(files))
    for part in expected(files):
        assert part in line


def test_a_log_sink_without_its_package_is_named(files, capsys, monkeypatch):
    """``--log wandb`` where wandb is not installed: one line naming the package, before anything runs."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    line = the_error(capsys, train(files, "--log", "wandb", "--out", str(files["root"] / "sinkless")))
    assert "--log wandb needs the wandb package: pip install wandb" in line
    assert not (files["root"] / "sinkless").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(files, capsys):
    line = the_error(capsys, train(files, "--device", "cuda"))
    assert "--device cuda: CUDA is not available here" in line and "use --device cpu" in line


@pytest.mark.parametrize("where,failure", [(run_files.os, errno.ENOSPC), (run_files.tempfile, errno.EACCES)],
                         ids=["full disk", "read-only"])
def test_an_unwritable_out_is_named_and_nothing_half_written_stays(files, capsys, monkeypatch, tmp_path, where,
                                                                   failure):
    def refuse(*args, **kwargs):
        raise OSError(failure, os.strerror(failure))

    # A full disk fails the write of a file's contents, a read-only directory the creation of the file.
    monkeypatch.setattr(where, "fsync" if where is run_files.os else "mkstemp", refuse)
    out = tmp_path / "runs"
    line = the_error(capsys, train(files, "--out", str(out)))
    assert "cannot write" in line and str(out) in line and os.strerror(failure) in line
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no config.json, no temporary file


def test_a_minari_main_data_file_cut_short_is_named(files, capsys, monkeypatch, tmp_path):
    pytest.importorskip("minari")
    from test_minari import box_episodes, write

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    write("D4RL/door/cut-v0", box_episodes([5, 3]))
    data_file = tmp_path / "minari" / "D4RL" / "door" / "cut-v0" / "data" / "main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[:300])
    for args in (["data", "info", "minari:D4RL/door/cut-v0"],
                 ["train", "--env", "minari:D4RL/door/cut-v0", "--out", str(tmp_path / "runs"), *TINY_ARGS]):
        line = the_error(capsys, args)
        assert f"{data_file}: not a readable HDF5 file" in line and "Minari dataset's main_data.hdf5" in line


def test_data_info_reads_a_minari_dataset(capsys, monkeypatch, tmp_path):
    pytest.importorskip("minari")
    from test_minari import box_episodes, write

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    write("D4RL/door/tiny-v0", box_episodes([5, 3], terminal_last=True))
    assert cli.main(["data", "info", "minari:D4RL/door/tiny-v0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["dataset"], info["transitions"], info["episodes"], info["terminals"]) == \
        ("minari:D4RL/door/tiny-v0", 8, 2, 2)
    assert (info["obs_dim"], info["act_dim"], info["episode_length"]["max"]) == (39, 28, 5)


# --- a corrupted checkpoints/latest.pt on --resume
def interrupted_run(tmp_path, monkeypatch, files, phase: str, at_step: int) -> tuple[list[str], Path]:
    """A tiny run stopped (as by a kill) in ``phase`` at its first evaluation or checkpoint from env or gradient
    step ``at_step`` on; its command line and run directory."""
    args = train(files, "--out", str(tmp_path / "runs"))
    periodic = pipeline.Trainer._periodic

    def stop(trainer, step, bar):
        periodic(trainer, step, bar)
        if trainer.progress.phase == phase and step >= at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Trainer, "_periodic", stop)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    monkeypatch.setattr(pipeline.Trainer, "_periodic", periodic)
    [run_dir] = (tmp_path / "runs").glob("*/opt-*")
    return [*args, "--resume"], run_dir


CORRUPTIONS = {"truncated": lambda data: data[: len(data) // 2], "random": lambda data: os.urandom(len(data)),
               "empty": lambda data: b""}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_latest_checkpoint_is_named_and_the_last_phase_checkpoint_resumed(
        files, capsys, monkeypatch, tmp_path, corruption):
    # Stopped after a checkpoint of the fine-tuning: latest.pt is no longer pretrain.pt's hard link.
    args, run_dir = interrupted_run(tmp_path, monkeypatch, files, "finetune", 50)
    latest = run_dir / "checkpoints" / "latest.pt"
    latest.write_bytes(CORRUPTIONS[corruption](latest.read_bytes()))
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: {latest} is not a readable checkpoint" in err
    assert "resuming from pretrain.pt instead, the end of the pretrain phase" in err
    assert f"resuming {run_dir} from checkpoints/pretrain.pt: phase finetune" in err
    assert "Traceback" not in err and (run_dir / "summary.json").exists()


def test_a_corrupted_latest_checkpoint_without_a_phase_checkpoint_is_an_error(files, capsys, monkeypatch, tmp_path):
    args, run_dir = interrupted_run(tmp_path, monkeypatch, files, "offline", 20)
    latest = run_dir / "checkpoints" / "latest.pt"
    latest.write_bytes(b"")
    capsys.readouterr()
    line = the_error(capsys, args)
    assert f"{latest} is not a readable checkpoint" in line and "no phase checkpoint is intact" in line
    assert f"remove {run_dir}" in line
