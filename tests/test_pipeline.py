"""The four phases on a tiny budget: every file written, and an interrupted run resumes to the same result."""
import json

import numpy as np
import pytest
import torch

from opt_fast.config import Config, resolve
from opt_fast.data.d4rl import load_dataset
from opt_fast.pipeline import Trainer, open_run
from opt_fast.io import read_jsonl
from opt_fast.metrics import evaluations, reproducible_records
from test_sweep import write_tiny_dataset

# Training records every 7 steps: windows that straddle the checkpoints (every 15) and the phase ends.
TINY = dict(offline_steps=40, n_tau=40, n_pretrain=10, online_steps=100, eval_every=20, eval_episodes=1,
            checkpoint_every=15, log_every=7, hidden=(16, 16), batch_size=16, utd=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small random dataset in D4RL's layout with hopper's sizes."""
    return load_dataset(write_tiny_dataset(tmp_path_factory.mktemp("data") / "hopper_random-v2.hdf5"))


def tiny_config(**overrides) -> Config:
    return resolve(Config(budget="smoke"), {"env": "hopper-random", **TINY, **overrides}, "random")


def final_params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name, module in trainer.agent.modules().items()
            for k, v in module.state_dict().items()}


def run_with_interrupt(config, run_dir, dataset, phase, step_attr, at_step):
    """Run until ``progress.<step_attr>`` reaches ``at_step`` in ``phase``, 'crash', then resume in a new trainer."""
    trainer = open_run(config, run_dir, dataset, resume=False)
    original = trainer._periodic

    def crash_after(step, bar):
        original(step, bar)
        if trainer.progress.phase == phase and getattr(trainer.progress, step_attr) >= at_step:
            raise KeyboardInterrupt

    trainer._periodic = crash_after
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    resumed = open_run(config, run_dir, dataset, resume=True)
    assert resumed.progress.phase == phase
    resumed.run()
    return resumed


def test_four_phases_write_every_file(tmp_path, dataset):
    config = tiny_config()
    trainer = open_run(config, tmp_path / "run", dataset, resume=False)
    [summary] = trainer.run()
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == config.to_json()
    for phase in ("offline", "collect", "pretrain", "finetune"):
        assert (run / "checkpoints" / f"{phase}.pt").exists()
    assert (run / "checkpoints" / "latest.pt").exists()
    records = evaluations(read_jsonl(run / "metrics.jsonl"))
    assert [r["phase"] for r in records] == ["offline", "offline", "collect", "collect", "pretrain",
                                             "finetune", "finetune", "finetune"]
    assert records[-1]["online_step"] == 100 and records[-1]["update_step"] == 2 * (100 - 40)
    for r in records:
        assert {"score", "return_mean", "q_off_q", "q_on_q", "mc_return", "q_off_bias"} <= set(r)
    assert records[-1]["kappa"] == pytest.approx(config.kappa_end)
    assert summary["final_score"] == records[-1]["score"]
    assert set(summary["phase_scores"]) == {"offline", "collect", "pretrain", "finetune"}
    assert json.loads((run / "summary.json").read_text())["final_score"] == summary["final_score"]
    with pytest.raises(FileExistsError, match="--resume"):
        open_run(config, run, dataset, resume=False)


def test_training_records_carry_losses_throughput_and_wall_clock(tmp_path, dataset):
    """Every log_every steps of a phase and at its end, each update info's mean over the window, the schedules,
    steps/s and the wall-clock seconds so far (which only grow)."""
    trainer = open_run(tiny_config(), tmp_path / "run", dataset, resume=False)
    trainer.run()
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    training = [r for r in records if "score" not in r]
    steps = {phase: [r[key] for r in training if r["phase"] == phase]
             for phase, key in (("offline", "offline_step"), ("collect", "online_step"),
                                ("pretrain", "pretrain_step"), ("finetune", "online_step"))}
    assert steps == {"offline": [7, 14, 21, 28, 35, 40], "collect": [7, 14, 21, 28, 35, 40], "pretrain": [7, 10],
                     "finetune": [42, 49, 56, 63, 70, 77, 84, 91, 98, 100]}
    for record in training:
        assert record["wall_seconds"] > 0 and record["updates_per_second"] >= 0
        if record["phase"] == "offline":
            assert {"critic_loss", "actor_loss"} <= set(record) and record["updates_per_second"] > 0
        if record["phase"] == "collect":
            assert record["env_steps_per_second"] > 0 and "critic_loss" not in record
        if record["phase"] == "pretrain":
            assert {"loss", "loss_off", "loss_on"} <= set(record)
        if record["phase"] == "finetune" and record["online_step"] > 42:
            assert {"critic_loss", "q_on_loss", "density_loss", "actor_loss", "priority_mean", "priority_max",
                    "kappa"} <= set(record) and record["env_steps_per_second"] > 0
            assert all(np.isfinite(record[k]) for k in ("critic_loss", "q_on_loss", "density_loss"))
    walls = [r["wall_seconds"] for r in records]
    assert walls == sorted(walls)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["wall_seconds"] == pytest.approx(sum(summary["phase_seconds"].values()))


def test_tensorboard_reads_the_event_file(tmp_path, dataset):
    """``--log tensorboard``: an event file that TensorBoard's own reader loads, with the records' scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = open_run(tiny_config(), tmp_path / "run", dataset, resume=False, sinks=["tensorboard"])
    trainer.run()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/score", "eval/return_mean", "train/critic_loss", "train/actor_loss", "train/density_loss",
            "train/kappa", "time/wall_seconds", "time/updates_per_second", "time/env_steps_per_second"} <= tags
    scores = [e.value for e in events.Scalars("eval/score")]
    assert scores == pytest.approx([r["score"] for r in evaluations(read_jsonl(tmp_path / "run" / "metrics.jsonl"))])


@pytest.mark.parametrize("phase,step_attr,at_step", [("offline", "offline_step", 20),
                                                     ("finetune", "online_step", 80)])
def test_resume_after_interruption_gives_the_same_result(tmp_path, dataset, phase, step_attr, at_step):
    config = tiny_config()
    reference = open_run(config, tmp_path / "straight", dataset, resume=False)
    reference.run()
    resumed = run_with_interrupt(config, tmp_path / "resumed", dataset, phase, step_attr, at_step)
    expected, got = final_params(reference), final_params(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert reproducible_records(tmp_path / "resumed" / "metrics.jsonl") == \
        reproducible_records(tmp_path / "straight" / "metrics.jsonl")
    # The wall-clock count continues from the checkpoint: it never starts again at zero.
    walls = [r["wall_seconds"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")]
    assert walls == sorted(walls)


def test_a_run_stopped_after_pretraining_continues_to_the_same_end(tmp_path, dataset):
    """``--until pretrain`` (the study's mechanism runs): Q_on pre-trained, no fine-tuning, a phase summary; resumed
    later without it, the run ends exactly where an uninterrupted one does."""
    config = tiny_config()
    reference = open_run(config, tmp_path / "straight", dataset, resume=False)
    reference.run()
    stopped = open_run(config, tmp_path / "stopped", dataset, resume=False)
    [summary] = stopped.run(after="pretrain")
    run = tmp_path / "stopped"
    assert stopped.progress.phase == "finetune" and not (run / "summary.json").exists()
    assert set(summary["phase_scores"]) == {"offline", "collect", "pretrain"}
    assert json.loads((run / "summary-pretrain.json").read_text())["phase_scores"] == summary["phase_scores"]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["phase"] == "pretrain"
    resumed = open_run(config, run, dataset, resume=True)
    resumed.run()
    assert reproducible_records(run / "metrics.jsonl") == reproducible_records(tmp_path / "straight" / "metrics.jsonl")
    for key, value in final_params(reference).items():
        torch.testing.assert_close(final_params(resumed)[key], value, rtol=0, atol=0, msg=key)


def test_baseline_skips_opt_phases_and_shares_the_offline_phase(tmp_path, dataset):
    cache = tmp_path / "cache"
    opt_run = open_run(tiny_config(), tmp_path / "opt", dataset, resume=False, cache_dir=cache)
    opt_run.run()
    cached = open_run(tiny_config(opt=False), tmp_path / "td3", dataset, resume=False, cache_dir=cache)
    assert cached.progress.phase == "finetune" and cached.progress.offline_step == TINY["offline_steps"]
    [summary] = cached.run()
    assert set(summary["phase_scores"]) == {"offline", "finetune"} and cached.agent.q_on is None
    # The same baseline without the cache does its own offline phase and ends identically.
    alone = open_run(tiny_config(opt=False), tmp_path / "td3-alone", dataset, resume=False)
    alone.run()
    for key, value in final_params(alone).items():
        torch.testing.assert_close(final_params(cached)[key], value, rtol=0, atol=0, msg=key)


def test_config_mismatch_on_resume_is_refused(tmp_path, dataset):
    open_run(tiny_config(), tmp_path / "run", dataset, resume=False)
    with pytest.raises(ValueError, match="differs"):
        open_run(tiny_config(seed=3), tmp_path / "run", dataset, resume=True)


def test_cli_seeds_runs_every_seed_and_shows_mean_and_ci(tmp_path, dataset, capsys):
    from opt_fast import cli

    tiny = ["--offline-steps", "40", "--n-tau", "40", "--n-pretrain", "10", "--online-steps", "100", "--eval-every",
            "20", "--eval-episodes", "1", "--checkpoint-every", "15", "--hidden", "16,16", "--batch-size", "16",
            "--utd", "2"]
    args = ["train", "--env", "hopper-random", "--dataset", str(dataset.path), "--budget", "smoke", "--compare",
            "--out", str(tmp_path / "runs"), *tiny]
    assert cli.main([*args, "--seeds", "0-1"]) == 0
    table = capsys.readouterr().out
    for variant, prefix in (("TD3", "td3"), ("TD3+OPT", "opt")):
        summaries = [json.loads(p.read_text()) for p in sorted(
            (tmp_path / "runs" / "hopper-random-v2").glob(f"{prefix}-smoke-seed*/summary.json"))]
        assert [s["seed"] for s in summaries] == [0, 1]
        finals = [s["final_score"] for s in summaries]
        half_width = 12.7062 * np.std(finals, ddof=1) / np.sqrt(2)  # Student t, 1 degree of freedom
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
        assert row.endswith(f"| {np.mean(finals):.1f} ± {half_width:.1f} |") and "| 0,1 |" in row
    assert cli.main([*args, "--seed", "1", "--seeds", "0-1"]) == 2
    assert "give --seed or --seeds, not both" in capsys.readouterr().err


def test_cli_resume_keeps_a_finished_phase_run_restored_without_checkpoints(tmp_path, dataset, capsys):
    """A ``--until pretrain`` run whose small outputs alone were kept (results/study/run.sh restores them on a new
    machine) is finished for ``--resume --until pretrain``: nothing is trained again and its summary is shown."""
    from opt_fast import cli

    args = ["train", "--env", "hopper-random", "--dataset", str(dataset.path), "--budget", "smoke", "--until",
            "pretrain", "--resume", "--out", str(tmp_path / "runs"), "--offline-steps", "40", "--n-tau", "40",
            "--n-pretrain", "10", "--eval-every", "20", "--eval-episodes", "1", "--hidden", "16,16",
            "--batch-size", "16"]
    assert cli.main(args) == 0
    [run] = [d.parent for d in (tmp_path / "runs" / "hopper-random-v2").glob("*/config.json")]
    kept = {name: (run / name).read_text() for name in ("config.json", "metrics.jsonl", "summary-pretrain.json")}
    for path in sorted(run.rglob("*"), reverse=True):  # everything else goes: checkpoints, their directory
        if path.name not in kept:
            path.rmdir() if path.is_dir() else path.unlink()
    capsys.readouterr()
    assert cli.main(args) == 0
    assert f"--resume: {run} already finished (its summary-pretrain.json is kept); nothing to run" in \
        capsys.readouterr().err
    assert {name: (run / name).read_text() for name in kept} == kept and not (run / "checkpoints").exists()


def test_compile_on_cpu_runs_eagerly_says_so_and_records_it(tmp_path, dataset, monkeypatch, capsys):
    """On CPU ``--compile`` keeps the eager updates (compiling measured no faster there), says so, and the summary
    records what ran; ``OPT_FAST_COMPILE_ON_CPU=1`` compiles anyway."""
    from opt_fast.runtime import compile_choice

    monkeypatch.delenv("OPT_FAST_COMPILE_ON_CPU", raising=False)
    cpu = torch.device("cpu")
    assert compile_choice(False, cpu) == (False, "eager")
    assert compile_choice(True, torch.device("cuda")) == (True, "torch.compile (cuda)")
    trainer = open_run(tiny_config(compile=True, n_pretrain=2, online_steps=60), tmp_path / "run", dataset,
                       resume=False)
    assert trainer.agent.finetune_critic_loss == trainer.agent._finetune_critic_loss  # not wrapped
    assert "opt-fast: eager (--compile on cpu" in capsys.readouterr().err
    [summary] = trainer.run()
    assert summary["compile"] == compile_choice(True, cpu)[1] and summary["compile"].startswith("eager (")
    monkeypatch.setenv("OPT_FAST_COMPILE_ON_CPU", "1")
    assert compile_choice(True, cpu) == (True, "torch.compile (cpu, OPT_FAST_COMPILE_ON_CPU=1)")
