"""Critic ensemble forward + backward: the fused Triton kernels against the torch reference (baddbmm).

The problem is one critic update of OPT's fine-tuning: Q_off and Q_on twins stacked (E = 4), a batch of 256
(obs 17, action 6: HalfCheetah), MLP 256-256-1, gradients w.r.t. every weight and bias. Each step ends with a
CUDA synchronise, so a step's time is what an eager training loop waits for. Both versions run in the same
session; the last test prints the speedup and asserts the target.

    pytest benchmarks/test_bench_kernels.py -rs                  # run (GPU only; -rs shows why it skipped)

Needs CUDA and Triton; without them the module is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("the Triton kernels are benchmarked on a CUDA GPU; none is available", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from kernels import ensemble_mlp, triton_q_values  # noqa: E402
from opt_fast.networks import Critic, q_values  # noqa: E402

if ensemble_mlp.INTERPRETED:
    pytest.skip("TRITON_INTERPRET is set: the interpreter's timings mean nothing", allow_module_level=True)

N_MEMBERS, BATCH, OBS_DIM, ACT_DIM = 4, 256, 17, 6
TARGET_SPEEDUP = 2.0
GROUP = "critic ensemble fwd+bwd: E=4, B=256, 256-256-1"

# Finished benchmark fixtures by implementation, for the speedup test.
_RESULTS: dict[str, Any] = {}

QFunction = Callable[..., torch.Tensor]


class Problem:
    """Parameters, a batch and an upstream gradient on the GPU, and one fwd+bwd step of a Q-function."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.critic = Critic(OBS_DIM, ACT_DIM, n_heads=N_MEMBERS).cuda()
        self.params = list(self.critic.parameters())
        self.obs = torch.randn(BATCH, OBS_DIM, device="cuda")
        self.action = torch.randn(BATCH, ACT_DIM, device="cuda")
        self.dq = torch.randn(N_MEMBERS, BATCH, device="cuda")

    def step(self, q_fn: QFunction) -> tuple[torch.Tensor, ...]:
        q = q_fn(self.critic.layer_params(), self.obs, self.action)
        grads = torch.autograd.grad(q, self.params, self.dq)
        torch.cuda.synchronize()
        return grads


@pytest.fixture(scope="module")
def problem() -> Problem:
    problem = Problem()
    # Warm-up (Triton compiles on the first call) and a check that both compute the same gradients.
    for grad, grad_ref in zip(problem.step(triton_q_values), problem.step(q_values)):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)
    return problem


@pytest.mark.benchmark(group=GROUP)
def test_torch_reference(benchmark: Any, problem: Problem) -> None:
    benchmark(problem.step, q_values)
    _RESULTS["torch"] = benchmark


@pytest.mark.benchmark(group=GROUP)
def test_triton(benchmark: Any, problem: Problem) -> None:
    benchmark(problem.step, triton_q_values)
    _RESULTS["triton"] = benchmark


def test_speedup(capsys: pytest.CaptureFixture[str]) -> None:
    stats = {name: fixture.stats for name, fixture in _RESULTS.items() if fixture.stats}
    if len(stats) < 2:
        pytest.skip("needs both fwd+bwd benchmarks measured in this session")
    triton_stats, torch_stats = stats["triton"].stats, stats["torch"].stats
    speedup = torch_stats.median / triton_stats.median
    _RESULTS["triton"].extra_info["speedup_vs_torch"] = round(speedup, 2)
    with capsys.disabled():
        print(
            f"\ncritic fwd+bwd (median, {torch.cuda.get_device_name()}): triton {triton_stats.median * 1e6:.1f} us, "
            f"torch {torch_stats.median * 1e6:.1f} us, speedup {speedup:.2f}x (target {TARGET_SPEEDUP:.0f}x)"
        )
    assert speedup >= TARGET_SPEEDUP
