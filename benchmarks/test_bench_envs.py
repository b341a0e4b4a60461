"""Env steps per second, Hopper-v5: gymnasium (C MuJoCo in a SyncVectorEnv) against MJX, at B = 1, 256, 4096.

One round is one step of all B envs with random actions, auto-reset included, ending once torch can read the
result (an ``.item()`` on the rewards, which waits for the device). Both backends run in the same session; the last
test prints steps/s per backend and batch and, on a GPU, asserts the target: MJX >= 500k steps/s at B = 4096.

    pytest benchmarks/test_bench_envs.py -s                      # run, print the table

MJX uses JAX's default device: a CUDA GPU needs JAX's CUDA build (``pip install "jax[cuda12]"`` matching the
installed jax). Without a GPU, B = 4096 is left out (MJX on CPU runs ~500 Hopper steps/s at B = 256) and the target
is reported as not measured. Each MJX batch size compiles once before timing (~20 s on CPU).
"""

from __future__ import annotations

from typing import Any

import jax
import pytest
import torch

from opt_fast.envs.mjx import VecEnv, make_vec_env

FAMILY = "hopper"
GPU = jax.default_backend() == "gpu"
BATCHES = (1, 256, 4096) if GPU else (1, 256)
TARGET_STEPS_PER_S = 500_000  # MJX, B = 4096, on an H100
ROUNDS = {1: 200, 256: 20, 4096: 10}

# Finished benchmark fixtures by (backend, B), for the table.
_RESULTS: dict[tuple[str, int], Any] = {}


def _measure(benchmark: Any, env: VecEnv) -> None:
    actions = torch.rand(ROUNDS[env.num_envs] + 1, env.num_envs, env.act_dim, device=env.device) * 2 - 1
    env.reset(seed=0)
    env.step(actions[-1]).reward.sum().item()  # compiles MJX's step; warms gymnasium's envs
    rounds = iter(actions)

    def step() -> None:
        env.step(next(rounds)).reward.sum().item()

    benchmark.pedantic(step, rounds=ROUNDS[env.num_envs], iterations=1)


@pytest.mark.parametrize("num_envs", BATCHES)
@pytest.mark.parametrize("backend", ["gymnasium", "mjx"])
def test_env_step(benchmark: Any, backend: str, num_envs: int) -> None:
    benchmark.group = f"{FAMILY} env step, B={num_envs}"
    env = make_vec_env(FAMILY, num_envs, backend)
    _measure(benchmark, env)
    env.close()
    benchmark.extra_info["steps_per_s"] = num_envs / benchmark.stats.stats.median
    benchmark.extra_info["device"] = str(env.device)
    _RESULTS[backend, num_envs] = benchmark


def test_steps_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    if not _RESULTS:
        pytest.skip("needs the env-step benchmarks measured in this session")
    with capsys.disabled():
        print(f"\n{FAMILY} env steps/s (median round), JAX backend {jax.default_backend()}:")
        for (backend, num_envs), fixture in sorted(_RESULTS.items()):
            print(f"  {backend:>9}  B={num_envs:<5d} {fixture.extra_info['steps_per_s']:>12,.0f}"
                  f"  on {fixture.extra_info['device']}")
    if not GPU:
        pytest.skip(f"MJX target ({TARGET_STEPS_PER_S:,} steps/s at B=4096) not measured: no GPU available")
    assert _RESULTS["mjx", 4096].extra_info["steps_per_s"] >= TARGET_STEPS_PER_S
