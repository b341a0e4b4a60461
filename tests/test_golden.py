"""The golden run: a fixed tiny TD3+OPT run, every phase end to end through the CLI, whose metrics must hash to a
committed digest. A change that must not alter the numbers (a refactor, a new option at its default) keeps it; a
change meant to alter them updates ``GOLDEN_DIGEST`` in its own commit, saying why.

The run is pinned to numerics that every x86 CPU computes alike: one thread, MKL's conditional numerical
reproducibility (``MKL_CBWR=COMPATIBLE``: the same code path on Intel and AMD) and ATen's scalar kernels
(``ATEN_CPU_CAPABILITY=default``), both set before torch loads, in a fresh process. Values are rounded to 6
significant digits before hashing.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_sweep import write_tiny_dataset

GOLDEN_DIGEST = "037fb5610669f7e9"

PINNED = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
          "MKL_NUM_THREADS": "1", "OPT_FAST_PROGRESS": "0"}
# Every phase with updates: TD3+BC offline, collection, meta-adaptation pre-training, and fine-tuning with the
# kappa ramp (medium-replay: 0.1 -> 0.9) from the first update at env step 40.
OPTIONS = ["--budget", "smoke", "--offline-steps", "60", "--n-tau", "40", "--n-pretrain", "20",
           "--online-steps", "120", "--eval-every", "40", "--eval-episodes", "1", "--checkpoint-every", "1000",
           "--hidden", "16,16", "--batch-size", "16", "--utd", "2", "--torch-threads", "1"]


def rounded(value):
    """Floats to 6 significant digits (recursively), so that the digest reads the numbers, not their last bits."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: rounded(v) for key, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


# What an evaluation record measures; anything else a record may carry (wall-clock time, throughput, training
# statistics between evaluations) is outside the digest.
EVALUATION_KEYS = ("phase", "offline_step", "online_step", "pretrain_step", "update_step", "kappa", "score",
                   "return_mean", "return_std", "episodes", "mc_return", "q_off_q", "q_on_q", "q_off_bias",
                   "q_on_bias")


def metrics_digest(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evaluations = [rounded({key: r[key] for key in EVALUATION_KEYS if key in r}) for r in records if "score" in r]
    return hashlib.sha256(json.dumps(evaluations, sort_keys=True).encode()).hexdigest()[:16]


def golden_run(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Path:
    """Run the golden configuration in a fresh, pinned process; returns its metrics.jsonl."""
    dataset = write_tiny_dataset(tmp_path / "hopper_medium_replay-v2.hdf5")
    out = tmp_path / "runs"
    env = {**os.environ, **PINNED, **(extra_env or {})}
    command = [sys.executable, "-m", "opt_fast.cli", "train", "--env", "hopper-medium-replay", "--dataset",
               str(dataset), "--out", str(out), *OPTIONS]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = out.glob("*/opt-*/metrics.jsonl")
    return metrics


def test_golden_run_digest(tmp_path):
    metrics = golden_run(tmp_path)
    phases = [r["phase"] for r in map(json.loads, metrics.read_text().splitlines()) if "score" in r]
    assert phases.count("finetune") == 2 and "pretrain" in phases
    digest = metrics_digest(metrics)
    assert digest == GOLDEN_DIGEST, (
        f"the golden run's metrics now hash to {digest}, not {GOLDEN_DIGEST}: this change alters the numbers. If it "
        "is meant to, set GOLDEN_DIGEST in tests/test_golden.py in a commit of its own that says why.")


@pytest.mark.parametrize("fast_path", ["0", "1"])
def test_cpu_fast_path_leaves_the_golden_numbers(tmp_path, fast_path):
    """The allocator setting of :mod:`opt_fast.runtime` changes speed, never results: the same digest (exactly)
    with the fast path off and on."""
    metrics = golden_run(tmp_path, {"OPT_FAST_CPU_FAST_PATH": fast_path})
    assert metrics_digest(metrics) == GOLDEN_DIGEST
    summary = json.loads((metrics.parent / "summary.json").read_text())
    allocator = summary["cpu_fast_path"]["allocator"]
    assert allocator.startswith("glibc mallopt") if fast_path == "1" else "OPT_FAST_CPU_FAST_PATH=0" in allocator
