"""Critic ensemble fwd+bwd on the CPU: opt_fast's stacked ensemble (one batched matmul per layer for all members)
against E separate critic modules (``nn.Sequential`` of ``nn.Linear``, as CORL and the official code build them).

The problem is one critic update of OPT's fine-tuning: Q_off and Q_on twins (E = 4), a batch of 256 (obs 17, action
6: HalfCheetah), MLP 256-256-1, gradients w.r.t. every weight and bias. Both run in the same session with the
same thread count; the last test prints both and asserts the target: ensemble >= 1.3x separate modules.

    pytest benchmarks/test_bench_ensemble.py
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from opt_fast.networks import Critic, q_values

N_MEMBERS, BATCH, OBS_DIM, ACT_DIM, HIDDEN = 4, 256, 17, 6, 256
THREADS = 2
TARGET_SPEEDUP = 1.3
GROUP = "critic fwd+bwd on CPU: E=4, B=256, 256-256-1"

_RESULTS: dict[str, Any] = {}


def separate_critics() -> list[nn.Sequential]:
    return [nn.Sequential(nn.Linear(OBS_DIM + ACT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, 1)) for _ in range(N_MEMBERS)]


@pytest.fixture(scope="module")
def problem() -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    ensemble = Critic(OBS_DIM, ACT_DIM, n_heads=N_MEMBERS, hidden=(HIDDEN, HIDDEN))
    modules = separate_critics()
    # The same weights in both, so the check below compares the two computations of one ensemble.
    with torch.no_grad():
        for member, module in enumerate(modules):
            for layer, (weight, bias, _, _) in zip(module[::2], ensemble.layer_params()):
                layer.weight.copy_(weight[member].T)
                layer.bias.copy_(bias[member].reshape(-1))
    obs, action = torch.randn(BATCH, OBS_DIM), torch.randn(BATCH, ACT_DIM)
    dq = torch.randn(N_MEMBERS, BATCH)

    def ensemble_step() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        params = list(ensemble.parameters())
        q = q_values(ensemble.layer_params(), obs, action)
        return q, torch.autograd.grad(q, params, dq)

    def separate_step() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        params = [p for module in modules for p in module.parameters()]
        inputs = torch.cat([obs, action], dim=-1)
        q = torch.stack([module(inputs).squeeze(-1) for module in modules])
        return q, torch.autograd.grad(q, params, dq)

    torch.testing.assert_close(ensemble_step()[0], separate_step()[0], rtol=1e-4, atol=1e-4)
    return {"ensemble": ensemble_step, "separate": separate_step}


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("side", ["ensemble", "separate"])
def test_critic_fwd_bwd(benchmark: Any, problem: dict[str, Any], side: str) -> None:
    benchmark.pedantic(problem[side], rounds=300, warmup_rounds=20)
    _RESULTS[side] = benchmark


def test_speedup(capsys: pytest.CaptureFixture[str]) -> None:
    if len(_RESULTS) < 2:
        pytest.skip("needs both fwd+bwd benchmarks measured in this session")
    medians = {side: fixture.stats.stats.median for side, fixture in _RESULTS.items()}
    speedup = medians["separate"] / medians["ensemble"]
    _RESULTS["ensemble"].extra_info["speedup_vs_separate"] = round(speedup, 3)
    with capsys.disabled():
        print(f"\n{GROUP}, {THREADS} threads (median): ensemble {medians['ensemble'] * 1e6:.0f} us, separate modules "
              f"{medians['separate'] * 1e6:.0f} us, speedup {speedup:.2f}x (target {TARGET_SPEEDUP}x)")
    assert speedup >= TARGET_SPEEDUP
