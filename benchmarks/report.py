"""Run every benchmark and write ``results/<gpu|cpu>-<date>.md``: the machine (card name), versions, every
measured figure and every target's verdict, from one session.

    python benchmarks/report.py                   # all suites; results/gpu-YYYY-MM-DD.md on a CUDA machine
    python benchmarks/report.py -k kernels        # extra arguments go to pytest

The suites are the pytest-benchmark files of ``benchmarks/``; each compares against a reference measured in the
same session. GPU-only suites (the Triton kernels) skip without CUDA and the page says so.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("opt-fast", "torch", "triton", "numpy", "mujoco", "mujoco-mjx", "jax", "jaxlib", "gymnasium",
            "pytest-benchmark")


def device_lines() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["GPU: none (CUDA not available): the GPU-only suites skipped"]
    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True)
    return [f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"CUDA {torch.version.cuda}",
            f"nvidia-smi: {smi.stdout.strip() if smi.returncode == 0 else 'not available'}"]


def outcomes(junit: Path) -> list[tuple[str, str, str]]:
    """(test id, passed/failed/skipped, message) for every benchmark test, from pytest's JUnit XML."""
    rows = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        verdict, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                verdict = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "").splitlines()[0][:200]
        rows.append((name, verdict, message))
    return rows


def render(bench: dict[str, Any], tests: list[tuple[str, str, str]], header: list[str], command: str) -> str:
    """The Markdown page: header lines, every benchmark's timing and extra figures, and every test's verdict."""
    lines = ["# opt-fast benchmarks", "", f"Command: `{command}`", "", *[f"- {line}" for line in header], ""]
    lines += ["## Measurements (seconds per round)", "",
              "| group | benchmark | median | mean | min | rounds | figures |", "|---|---|---|---|---|---|---|"]
    for entry in sorted(bench.get("benchmarks", []), key=lambda b: (b.get("group") or "", b["name"])):
        s = entry["stats"]
        extra = ", ".join(f"{key}={value:,.3g}" if isinstance(value, float) else f"{key}={value}"
                          for key, value in sorted(entry.get("extra_info", {}).items()))
        lines.append(f"| {entry.get('group') or ''} | {entry['name']} | {s['median']:.3g} | {s['mean']:.3g} | "
                     f"{s['min']:.3g} | {s['rounds']} | {extra} |")
    lines += ["", "## Targets and checks", "", "| test | verdict | message |", "|---|---|---|"]
    lines += [f"| {name} | {verdict} | {message.replace('|', '/')} |" for name, verdict, message in tests]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    import torch

    from opt_fast.io import atomic_write
    from opt_fast.provenance import code_version, machine_description, package_versions

    kind = "gpu" if torch.cuda.is_available() else "cpu"
    out = ROOT / "results" / f"{kind}-{datetime.date.today().isoformat()}.md"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        bench_json, junit = Path(tmp) / "bench.json", Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "-p", "no:cacheprovider",
                   f"--benchmark-json={bench_json}", f"--junitxml={junit}", "-rs", *argv]
        code = subprocess.run(command, cwd=ROOT).returncode
        if not junit.exists():
            print(f"benchmarks/report.py: pytest wrote no results (exit {code})", file=sys.stderr)
            return code or 1
        bench = json.loads(bench_json.read_text()) if bench_json.exists() else {}
        tests = outcomes(junit)
    header = [f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}",
              f"Machine: {machine_description()}", *device_lines(), f"Code: {code_version()}",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions(PACKAGES).items()),
              f"pytest exit status: {code} (1 = some target missed; see the table)",
              # Other processes on the machine slow every side alike, ratios less than absolute figures.
              "Load average (1, 5, 15 min) at the start: {:.2f}, {:.2f}, {:.2f}; at the end: {:.2f}, {:.2f}, {:.2f} "
              "(on {} cores)".format(*load_before, *os.getloadavg(), os.cpu_count())]
    text = render(bench, tests, header, " ".join(["python benchmarks/report.py", *argv]))
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"wrote {out}")
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
