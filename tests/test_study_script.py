"""results/study/run.sh's ``keep``: a run's small outputs are copied into the checkout only once the phase it last
wrote is finished, so a run training in the other lane never overwrites what was kept of its earlier phases."""
import os
import shutil
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "results" / "study" / "run.sh"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    time.sleep(0.02)  # the next file's mtime is then strictly later


def test_keep_copies_finished_phases_only(tmp_path):
    (tmp_path / "results" / "study").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "results" / "study" / "run.sh")
    runs = tmp_path / "home" / "walker2d-random-v2"
    for name in ("done", "mechanism", "training", "fresh"):
        _write(runs / name / "config.json", "{}")
        _write(runs / name / "metrics.jsonl", f"{name} 1\n")
    _write(runs / "done" / "summary.json", "{}")
    _write(runs / "mechanism" / "summary-pretrain.json", "{}")
    _write(runs / "training" / "summary-pretrain.json", "{}")
    _write(runs / "training" / "metrics.jsonl", "training 1\ntraining 2\n")  # fine-tuning goes on after it
    kept = tmp_path / "results" / "study" / "runs" / "walker2d-random"
    _write(kept / "training" / "metrics.jsonl", "training 1\n")  # what an earlier job kept of its mechanism phase

    env = {**os.environ, "RUNS": str(tmp_path / "home"), "OPT_FAST_DATA_DIR": str(tmp_path / "data")}
    subprocess.run(["bash", "results/study/run.sh", "lane"], input="keep walker2d-random\n", text=True,
                   cwd=tmp_path, env=env, check=True, capture_output=True)

    assert sorted(p.name for p in kept.iterdir()) == ["done", "mechanism", "training"]
    assert sorted(p.name for p in (kept / "done").iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]
    assert (kept / "mechanism" / "summary-pretrain.json").exists()
    assert (kept / "training" / "metrics.jsonl").read_text() == "training 1\n"
