"""What a resume says, the records it keeps (phase_seconds), a checkpoint commit interrupted anywhere, and progress
lines in log files (issue 12)."""
import json
import os

import pytest
import torch

from opt_fast import cli, pipeline
from opt_fast.pipeline import open_run
from opt_fast.metrics import reproducible_records
from test_data_trust import TINY_ARGS
from test_pipeline import dataset, final_params, tiny_config  # noqa: F401


def test_resume_says_what_it_continues_or_which_runs_differ(tmp_path, capsys):
    data = tmp_path / "data.hdf5"
    from test_sweep import write_tiny_dataset

    write_tiny_dataset(data)
    args = ["train", "--env", "hopper-random", "--dataset", str(data), "--out", str(tmp_path / "runs"), *TINY_ARGS,
            "--no-opt"]
    assert cli.main([*args, "--resume"]) == 0
    assert "--resume: no run of this configuration and data in" in capsys.readouterr().err
    assert cli.main([*args, "--resume"]) == 0
    [run_dir] = (tmp_path / "runs" / "hopper-random-v2").glob("td3-*")
    assert f"resuming {run_dir} from checkpoints/latest.pt: phase done" in capsys.readouterr().err
    # Another option and other data: nothing matches, and the existing run is listed with what differs.
    assert cli.main([*args, "--resume", "--gamma", "0.98", "--log-every", "7"]) == 0
    err = capsys.readouterr().err
    assert f"existing run {run_dir}: --gamma (0.99 there, 0.98 here)\n" in err  # --log-every is bookkeeping
    write_tiny_dataset(data, seed=5)
    assert cli.main([*args, "--resume"]) == 0
    assert f"existing run {run_dir}: the data (another content digest)" in capsys.readouterr().err


def test_a_changed_bookkeeping_option_on_resume_names_the_option(tmp_path, dataset):  # noqa: F811
    open_run(tiny_config(), tmp_path / "run", dataset, resume=False)
    with pytest.raises(ValueError, match=r"differs from the requested configuration in --torch-threads \(0 there, "
                                         r"1 here\)"):
        open_run(tiny_config(torch_threads=1), tmp_path / "run", dataset, resume=True)


def test_phase_seconds_add_up_across_resumes(tmp_path, dataset, monkeypatch):  # noqa: F811
    """A clock that reads the offline step: the offline phase's seconds are its steps, however often it is
    interrupted, as long as the work since the last checkpoint is counted once per process that does it."""
    trainers = []
    monkeypatch.setattr(pipeline.state, "perf_counter", lambda: float(trainers[-1].progress.offline_step))
    config = tiny_config()
    trainers.append(open_run(config, tmp_path / "run", dataset, resume=False))
    original = pipeline.Trainer._periodic

    def interrupt_at_20(trainer, step, bar):
        original(trainer, step, bar)
        if trainer.progress.phase == "offline" and step >= 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Trainer, "_periodic", interrupt_at_20)
    with pytest.raises(KeyboardInterrupt):
        trainers[-1].run()
    monkeypatch.setattr(pipeline.Trainer, "_periodic", original)
    trainers.append(open_run(config, tmp_path / "run", dataset, resume=True))
    assert trainers[-1].progress.phase_seconds == {"offline": 15.0}  # its checkpoint at step 15
    [summary] = trainers[-1].run()
    # 15 s before the checkpoint, then 25 s from it to the end (before: only the 25 s of the last process).
    assert summary["phase_seconds"]["offline"] == config.offline_steps == 40.0


# Where the commit at the end of the collection is killed: the function call that does not happen, and the phase the
# resumed run is in (the old state: still collecting from the checkpoint at env step 30; the new one: pre-training).
COMMIT_WINDOWS = {
    "before the marker": ("write_json", "commit.json", "collect"),
    "after the marker, before the rename": ("replace", "latest.pt.next", "pretrain"),
    "between the rename and the phase link": ("link", ".collect.pt.link", "pretrain"),
}


@pytest.mark.parametrize("window", sorted(COMMIT_WINDOWS))
def test_a_commit_killed_anywhere_leaves_the_old_or_the_new_state_complete(tmp_path, dataset,  # noqa: F811
                                                                          monkeypatch, window):
    function, name, resumed_phase = COMMIT_WINDOWS[window]
    config = tiny_config()
    straight = open_run(config, tmp_path / "straight", dataset, resume=False)
    straight.run()
    trainer = open_run(config, tmp_path / "cut", dataset, resume=False)
    where = pipeline.checkpoints if function == "write_json" else os
    real = getattr(where, function)

    def killed(first, second, *args, **kwargs):
        path = second if function == "link" else first
        if trainer.progress.phase == "pretrain" and str(path).endswith(name):
            raise KeyboardInterrupt
        return real(first, second, *args, **kwargs)

    monkeypatch.setattr(where, function, killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(where, function, real)
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert not (checkpoints / "collect.pt").exists()
    # What a kill -9 inside a write leaves: temporary files, empty or partial.
    (checkpoints / ".commit.json.x1y2.tmp").write_bytes(b"")
    (tmp_path / "cut" / ".metrics.jsonl.a1b2.tmp").write_bytes(b"{")
    resumed = open_run(config, tmp_path / "cut", dataset, resume=True)
    assert resumed.progress.phase == resumed_phase and not (checkpoints / "commit.json").exists()
    assert (checkpoints / "collect.pt").exists() == (resumed_phase == "pretrain")
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        ["offline.pt", "latest.pt"] + (["collect.pt"] if resumed_phase == "pretrain" else []))
    assert list((tmp_path / "cut").rglob("*.tmp")) == []
    resumed.run()
    for key, value in final_params(straight).items():
        torch.testing.assert_close(final_params(resumed)[key], value, rtol=0, atol=0, msg=key)
    assert reproducible_records(tmp_path / "cut" / "metrics.jsonl") == \
        reproducible_records(tmp_path / "straight" / "metrics.jsonl")


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, dataset, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("OPT_FAST_PROGRESS", "1")
    open_run(tiny_config(opt=False), tmp_path / "run", dataset, resume=False).run()
    err = capsys.readouterr().err
    assert "\r" not in err
    offline = [line for line in err.splitlines() if " offline: " in line]
    assert [line.split(": ")[1].split(" ")[0] for line in offline] == [f"{4 * i}/40" for i in range(1, 11)]
    assert offline[0].startswith("hopper-random-v2 (generated) offline: 4/40 steps (10%), ")
    assert ", score " in offline[5]  # the evaluation at step 20 shows its score from then on
    finetune = [line for line in err.splitlines() if " finetune: " in line]
    assert finetune[-1].split(": ")[1].startswith("100/100 steps (100%)")


def test_summary_records_the_data_digest_and_phase_seconds(tmp_path, dataset):  # noqa: F811
    [summary] = open_run(tiny_config(), tmp_path / "run", dataset, resume=False).run()
    assert summary["data_digest"] == dataset.content_digest
    assert set(summary["phase_seconds"]) == {"offline", "collect", "pretrain", "finetune"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data_digest"] == dataset.content_digest
