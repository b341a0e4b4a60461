"""``benchmarks/report.py`` renders every measured figure and every target's verdict of one benchmark session."""
import importlib.util
from pathlib import Path

BENCH_REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "report.py"
spec = importlib.util.spec_from_file_location("bench_report", BENCH_REPORT)
bench_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_report)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="benchmarks.test_bench_replay" name="test_native_round" time="1.0"/>
<testcase classname="benchmarks.test_bench_replay" name="test_speedup" time="0.1">
  <failure message="AssertionError: native is 1.50x numpy, target 10x&#10;second line">trace</failure></testcase>
<testcase classname="benchmarks.test_bench_kernels" name="test_triton" time="0">
  <skipped message="the Triton kernels are benchmarked on a CUDA GPU; none is available">skip</skipped></testcase>
</testsuite></testsuites>"""


def test_outcomes_and_page(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    tests = bench_report.outcomes(junit)
    assert tests == [
        ("test_bench_replay::test_native_round", "passed", ""),
        ("test_bench_replay::test_speedup", "failed", "AssertionError: native is 1.50x numpy, target 10x"),
        ("test_bench_kernels::test_triton", "skipped",
         "the Triton kernels are benchmarked on a CUDA GPU; none is available"),
    ]
    bench = {"benchmarks": [
        {"group": "replay round", "name": "test_numpy_round", "extra_info": {},
         "stats": {"median": 5.9e-4, "mean": 6.0e-4, "min": 5.5e-4, "rounds": 200}},
        {"group": "replay round", "name": "test_native_round", "extra_info": {"speedup_vs_numpy": 29.46},
         "stats": {"median": 2.0e-5, "mean": 2.1e-5, "min": 1.9e-5, "rounds": 5000}},
    ]}
    page = bench_report.render(bench, tests, ["GPU: NVIDIA H100 80GB HBM3"], "python benchmarks/report.py")
    lines = page.splitlines()
    assert "- GPU: NVIDIA H100 80GB HBM3" in lines and "Command: `python benchmarks/report.py`" in lines
    native = lines.index("| replay round | test_native_round | 2e-05 | 2.1e-05 | 1.9e-05 | 5000 | speedup_vs_numpy=29.5 |")
    assert native < lines.index("| replay round | test_numpy_round | 0.00059 | 0.0006 | 0.00055 | 200 |  |")
    assert "| test_bench_replay::test_speedup | failed | AssertionError: native is 1.50x numpy, target 10x |" in lines
