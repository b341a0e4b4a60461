"""Balanced-replay round on a 2M-row buffer: the native buffer against the numpy sum-tree.

One round is what OPT's online phase does per update (docs/method.md §3.3): a stratified
prioritized sample of 256 rows, then a priority update of those 256 rows. Both versions run in the
same session, so the speedup compares like with like; the last test prints it and asserts the target.

    pytest benchmarks/test_bench_replay.py                       # run, print the speedup
    pytest benchmarks --benchmark-autosave                       # save to .benchmarks/
    pytest benchmarks --benchmark-compare                        # compare with the last save

The buffer has HalfCheetah's sizes (obs 17, act 6): about 330 MB of transitions, plus 18 MB of tree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reference_sumtree import NumpySumTree

from opt_fast.replay import ReplayBuffer

ROWS = 2_000_000
BATCH = 256
OBS_DIM, ACT_DIM = 17, 6
TARGET_SPEEDUP = 10.0
GROUP = "replay round: prioritized sample 256 + update 256, 2M rows"

# Finished benchmark fixtures by implementation, for the speedup test.
_RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def priorities() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 1.5, size=ROWS)


@pytest.fixture(scope="module")
def new_priorities() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.5, 1.5, size=BATCH)


@pytest.fixture(scope="module")
def native_buffer(priorities: np.ndarray) -> ReplayBuffer:
    buffer = ReplayBuffer(ROWS, OBS_DIM, ACT_DIM, seed=0)
    chunk = 250_000  # bounds the temporary arrays
    obs = np.zeros((chunk, OBS_DIM), dtype=np.float32)
    action = np.zeros((chunk, ACT_DIM), dtype=np.float32)
    scalar = np.zeros(chunk, dtype=np.float32)
    for _ in range(ROWS // chunk):
        buffer.add_batch(obs, action, scalar, obs, scalar, priority=1.0)
    buffer.update_priorities(np.arange(ROWS), priorities)
    return buffer


@pytest.fixture(scope="module")
def numpy_tree(priorities: np.ndarray) -> NumpySumTree:
    tree = NumpySumTree(ROWS)
    tree.fill(priorities)
    return tree


@pytest.mark.benchmark(group=GROUP)
def test_native_round(benchmark: Any, native_buffer: ReplayBuffer, new_priorities: np.ndarray) -> None:
    def round_() -> None:
        native_buffer.update_priorities(native_buffer.sample_prioritized(BATCH), new_priorities)

    benchmark(round_)
    _RESULTS["native"] = benchmark


@pytest.mark.benchmark(group=GROUP)
def test_numpy_round(benchmark: Any, numpy_tree: NumpySumTree, new_priorities: np.ndarray) -> None:
    rng = np.random.default_rng(2)

    def round_() -> None:
        numpy_tree.update(numpy_tree.sample_stratified(BATCH, rng), new_priorities)

    benchmark(round_)
    _RESULTS["numpy"] = benchmark


def test_speedup(capsys: pytest.CaptureFixture[str]) -> None:
    stats = {name: fixture.stats for name, fixture in _RESULTS.items() if fixture.stats}
    if len(stats) < 2:
        pytest.skip("needs both round benchmarks measured in this session")
    native, reference = stats["native"].stats, stats["numpy"].stats
    speedup = reference.median / native.median
    _RESULTS["native"].extra_info["speedup_vs_numpy"] = round(speedup, 2)
    with capsys.disabled():
        print(
            f"\nreplay round (median): native {native.median * 1e6:.1f} us, numpy sum-tree "
            f"{reference.median * 1e6:.1f} us, speedup {speedup:.1f}x (target {TARGET_SPEEDUP:.0f}x)"
        )
    assert speedup >= TARGET_SPEEDUP
