"""opt_fast's updates against the same math as one jitted JAX/XLA program (``jax_opt.py``), with each side's achieved
GFLOP/s against the best GEMM rate measured in the same session (the roofline fraction).

Groups (per update, one policy-delay cycle of two updates per round, the same random batches on both sides, no
replay sampling or env steps):

- TD3+BC offline update, batch 256, Hopper's sizes: ``TD3.offline_update`` vs ``jax_opt.td3_bc_cycle``;
- OPT fine-tuning update (density-ratio step, priorities, Q_off and Q_on, every 2nd the actor on the kappa mix):
  ``OPTAgent.finetune_update`` vs ``jax_opt.finetune_cycle``.

The ratio cases print both sides, the GEMM rate, each side's GFLOP/s and its share of the GEMM rate. The aims
(opt_fast >= 0.8x JAX, >= 50% of the GEMM rate) are reported, not asserted: they are where the CPU path stands.

    pytest benchmarks/test_bench_jax.py -s
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import jax_opt  # noqa: E402

from opt_fast.agents.opt import OPTAgent  # noqa: E402
from opt_fast.agents.common import Batch  # noqa: E402
from opt_fast.config import Config  # noqa: E402

OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5
THREADS = 2
KAPPA = 0.5
AIM_VS_JAX = 0.8
AIM_ROOFLINE = 0.5
OFFLINE = "TD3+BC offline update, batch 256: opt_fast vs JAX"
FINETUNE = "OPT fine-tuning update (UTD step), batch 256: opt_fast vs JAX"
_RESULTS: dict[tuple[str, str], Any] = {}


def config() -> Config:
    return Config(env="hopper-random", torch_threads=THREADS)


def mlp_flops(widths: tuple[int, ...], rows: int, members: int = 1) -> float:
    """Forward FLOPs of an MLP: 2 m k n per layer's matmul."""
    return 2.0 * rows * members * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def cycle_flops(group: str) -> float:
    """FLOPs of one policy-delay cycle (2 updates), counting the matmuls only, a backward pass as twice its forward
    (once when only input gradients are needed: the critic under the actor's loss)."""
    cfg, b = config(), config().batch_size
    actor = mlp_flops((OBS_DIM, *cfg.hidden, ACT_DIM), b)
    q = mlp_flops((OBS_DIM + ACT_DIM, *cfg.hidden, 1), b)  # one Q head or the density net
    if group == OFFLINE:  # 2 x (target actor + twin target critic + twin critic fwd/bwd) + actor fwd/bwd through Q_1
        return 2 * (actor + 2 * q + 3 * 2 * q) + (3 * actor + 2 * q)
    # 2 x (density fwd/bwd on two batches + fwd on the sampled one + target actor + 4 target heads + 4 heads
    # fwd/bwd) + actor fwd/bwd through Q_off_1 and Q_on_1
    return 2 * (3 * 2 * q + q + actor + 4 * q + 3 * 4 * q) + (3 * actor + 2 * 2 * q)


def best_gemm_rate() -> float:
    """The best FLOP/s of a critic-sized batched GEMM ([4, 256, 256] x [4, 256, 256]) in torch and in XLA."""
    a, b = torch.randn(4, 256, 256), torch.randn(4, 256, 256)
    ja, jb = jnp.asarray(a.numpy()), jnp.asarray(b.numpy())
    jitted = jax.jit(jnp.matmul)
    rates = []
    for fn in (lambda: torch.bmm(a, b), lambda: jitted(ja, jb).block_until_ready()):
        for _ in range(20):
            fn()
        started = time.perf_counter()
        for _ in range(200):
            fn()
        rates.append(2 * 4 * 256**3 * 200 / (time.perf_counter() - started))
    return max(rates)


@pytest.fixture(scope="module", autouse=True)
def threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def jax_batches(n: int, seed: int) -> jax_opt.Batch:
    return jax_opt.stacked_batches(np.random.default_rng(seed), n, config().batch_size, OBS_DIM, ACT_DIM)


def torch_batches(n: int, seed: int) -> list[Batch]:
    """The batches :func:`jax_batches` makes with the same seed, as opt_fast's."""
    stacked = jax_batches(n, seed)
    return [Batch(*(torch.from_numpy(np.array(x[i])) for x in stacked)) for i in range(n)]


def measure(benchmark: Any, group: str, side: str, fn) -> None:
    benchmark.extra_info["loadavg_1min_before"] = os.getloadavg()[0]
    benchmark.pedantic(fn, rounds=40, iterations=1, warmup_rounds=3)
    _RESULTS[group, side] = benchmark


def test_jax_td3_bc_matches_opt_fast_first_update() -> None:
    """Same weights, same batch, no target noise: the first critic loss and the updated critic agree."""
    cfg = Config(env="hopper-random", policy_noise=0.0)
    ours = OPTAgent(OBS_DIM, ACT_DIM, Config(**{**cfg.to_json(), "hidden": tuple(cfg.hidden), "opt": False}))
    td3 = ours.backbone
    state = jax_opt.td3_bc_init(jax.random.PRNGKey(0), OBS_DIM, ACT_DIM, cfg)
    as_jax = lambda module: [(jnp.asarray(w.detach().numpy()), jnp.asarray(b.detach().numpy()))  # noqa: E731
                             for w, b, _, _ in module.layer_params()]
    state.update(actor=as_jax(td3.actor.net), critic=as_jax(td3.critic), actor_target=as_jax(td3.actor.net),
                 critic_target=as_jax(td3.critic))
    state.update(actor_opt=jax_opt.adam_init(state["actor"]), critic_opt=jax_opt.adam_init(state["critic"]))
    [first, second] = torch_batches(2, seed=1)
    state, critic_losses, _ = jax_opt.td3_bc_cycle(cfg)(state, jax_batches(2, seed=1), jax.random.PRNGKey(1))
    loss = td3.offline_update(first, 0)["critic_loss"]
    np.testing.assert_allclose(float(critic_losses[0]), float(loss), rtol=1e-5)
    td3.offline_update(second, 1)
    for (w, _), (ours_w, _, _, _) in zip(state["critic"], td3.critic.layer_params()):
        np.testing.assert_allclose(np.asarray(w), ours_w.detach().numpy(), atol=1e-5)


@pytest.mark.benchmark(group=OFFLINE)
def test_offline_opt_fast(benchmark: Any) -> None:
    td3 = OPTAgent(OBS_DIM, ACT_DIM, Config(env="hopper-random", opt=False)).backbone
    batches, steps = torch_batches(2, seed=2), iter(range(10**9))

    def cycle() -> None:
        for batch in batches:
            td3.offline_update(batch, next(steps))

    measure(benchmark, OFFLINE, "opt_fast", cycle)


@pytest.mark.benchmark(group=OFFLINE)
def test_offline_jax(benchmark: Any) -> None:
    cfg = config()
    step = jax_opt.td3_bc_cycle(cfg)
    state = [jax_opt.td3_bc_init(jax.random.PRNGKey(0), OBS_DIM, ACT_DIM, cfg)]
    batches = jax_batches(2, seed=2)
    key = jax.random.PRNGKey(1)

    def cycle() -> None:
        state[0], losses, _ = step(state[0], batches, key)
        losses.block_until_ready()

    measure(benchmark, OFFLINE, "jax", cycle)


@pytest.mark.benchmark(group=FINETUNE)
def test_finetune_opt_fast(benchmark: Any) -> None:
    agent = OPTAgent(OBS_DIM, ACT_DIM, config())
    agent.start_finetuning()
    off, on, batch = (torch_batches(2, seed) for seed in (3, 4, 5))
    steps = iter(range(10**9))

    def cycle() -> None:
        for i in range(2):
            agent.finetune_update(off[i], on[i], batch[i], KAPPA, 0.5, next(steps))

    measure(benchmark, FINETUNE, "opt_fast", cycle)


@pytest.mark.benchmark(group=FINETUNE)
def test_finetune_jax(benchmark: Any) -> None:
    cfg = config()
    step = jax_opt.finetune_cycle(cfg, KAPPA)
    state = [jax_opt.finetune_init(jax.random.PRNGKey(0), OBS_DIM, ACT_DIM, cfg)]
    off, on, batch = (jax_batches(2, seed) for seed in (3, 4, 5))
    key = jax.random.PRNGKey(1)

    def cycle() -> None:
        state[0], priorities = step(state[0], off, on, batch, key)
        priorities.block_until_ready()

    measure(benchmark, FINETUNE, "jax", cycle)


@pytest.mark.parametrize("group", [OFFLINE, FINETUNE])
def test_ratio_and_roofline(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Print both sides per update, opt_fast's ratio to JAX, and each side's share of the best GEMM rate."""
    fixtures = {side: _RESULTS.get((group, side)) for side in ("opt_fast", "jax")}
    if any(f is None or not f.stats for f in fixtures.values()):
        pytest.skip(f"needs both '{group}' benchmarks measured in this session")
    gemm = best_gemm_rate()
    flops = cycle_flops(group) / 2
    lines = [f"\n{group} (load average now {os.getloadavg()[0]:.2f}); best GEMM rate {gemm / 1e9:.1f} GFLOP/s; "
             f"{flops / 1e6:.0f} MFLOP per update (matmuls):"]
    for side, fixture in fixtures.items():
        median = fixture.stats.stats.median / 2
        rate = flops / median
        fixture.extra_info.update(gflops=round(rate / 1e9, 1), roofline_fraction=round(rate / gemm, 3))
        lines.append(f"  {side:>8}: median {median * 1e6:8.0f} us per update ({1 / median:6.0f} updates/s), "
                     f"{rate / 1e9:6.1f} GFLOP/s = {rate / gemm:.0%} of the GEMM rate (aim >= {AIM_ROOFLINE:.0%})")
    ratio = fixtures["jax"].stats.stats.median / fixtures["opt_fast"].stats.stats.median
    fixtures["opt_fast"].extra_info["ratio_to_jax"] = round(ratio, 3)
    lines.append(f"  opt_fast / JAX throughput (medians): {ratio:.2f}x (aim >= {AIM_VS_JAX}x)")
    with capsys.disabled():
        print("\n".join(lines))
