"""Training throughput on CPU: opt_fast against the straightforward reference (``reference_opt.py``), and eager
against ``torch.compile``.

Groups (each side measured in the same session, so the ratios compare like with like):

- TD3+BC offline update, batch 256 from 1M rows: ``TD3.offline_update`` on batches from the native buffer vs
  the reference's separate critic modules on numpy-gathered batches;
- OPT fine-tuning on Hopper-v5: one env step + 5 updates (UTD 5) with sampling and priority updates, through
  ``Trainer._env_step`` / ``Trainer._finetune_update``, vs the reference loop; 1M offline rows;
- Q_on's online pre-training (meta-adaptation) update: ``OPTAgent.pretrain_update`` vs the reference's modules;
- the same fine-tuning step in the OEMA design (``peer_oema.py``: the reference with its balanced replay's sum-tree
  walked item by item, as OEMA and Off2OnRL lay it out);
- the same fine-tuning step eager vs ``OPTAgent.compile()``; the compile time is reported on its own. On CUDA the
  compiled step must reach 0.95x eager; on CPU, where ``--compile`` runs eagerly, it must stay below 1/0.95x eager
  (else the CPU rule of ``opt_fast.runtime.compile_choice`` is wrong).

Each benchmark round runs its function twice (one policy-delay cycle, so every round holds the same share of
actor steps); times are per call: per update (offline), per env step (fine-tuning). The ``test_ratio`` cases
print both numbers and assert the targets: the TD3+BC update >= 2x the reference, the fine-tuning step >= 2.5x
the reference and >= 2x the OEMA peer, compiled >= 0.95x eager (CUDA).

    pytest benchmarks/test_bench_training.py                          # measure, print, assert
    pytest benchmarks/test_bench_training.py --benchmark-save=training  # store a baseline in .benchmarks/
    pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:20%

The first tests check that the reference computes the same updates as opt_fast (same weights, no target noise),
so the comparison is between two implementations of one algorithm.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peer_oema import ItemSumTree, OEMAPeerFinetuner
from reference_opt import NumpyReplay, ReferenceAgent, ReferenceFinetuner, Transitions
from reference_sumtree import NumpySumTree
from torch import nn

from opt_fast.agents.opt import OPTAgent
from opt_fast.agents.common import Batch
from opt_fast.config import Config
from opt_fast.data.d4rl import OfflineDataset
from opt_fast.data.names import parse_dataset_name
from opt_fast.envs import make_env
from opt_fast.networks import EnsembleMLP
from opt_fast.pipeline import Trainer

OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5
OFFLINE_ROWS = 1_000_000
THREADS = 2
TARGET_OFFLINE_VS_REFERENCE = 2.0
TARGET_FINETUNE_VS_REFERENCE = 2.5
TARGET_FINETUNE_VS_PEER = 2.0
TARGET_PRETRAIN_VS_REFERENCE = 1.0  # no target in the issue: measured, and never slower than the reference
TARGET_COMPILED_VS_EAGER = 0.95  # "--compile is never slower than eager", with 5% measurement slack

OFFLINE = "TD3+BC offline update, batch 256, 1M rows"
FINETUNE = "OPT fine-tuning env step + 5 updates, Hopper-v5, 1M offline rows"
PRETRAIN = "OPT online pre-training (meta-adaptation) update of Q_on, batches 256 + 256"
COMPILE = "OPT fine-tuning env step + 5 updates: eager vs torch.compile"
UNIT = {OFFLINE: "update", FINETUNE: "env step", PRETRAIN: "update", COMPILE: "env step"}

# Finished benchmark fixtures by (group, side), read by `test_ratio`.
_RESULTS: dict[tuple[str, str], Any] = {}
# Seconds the compiled trainer spent in its first (compiling) env steps.
_COMPILE_SECONDS: dict[str, float] = {}


def bench_config(**overrides: Any) -> Config:
    """Paper hyper-parameters (256-256, batch 256, UTD 5, policy delay 2) and room for the benchmark's env steps."""
    return Config(env="hopper-random", online_steps=5_000, torch_threads=THREADS, **overrides)


# ------------------------------------------------------------------------------------------ the reference is OPT
def load_linear_layers(sequential: nn.Sequential, ensemble: EnsembleMLP, member: int) -> None:
    """Copy member ``member`` of an ensemble (weights [E, in, out]) into the Linear layers of an nn.Sequential."""
    linears = [m for m in sequential if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, (weight, bias, _, _) in zip(linears, ensemble.layer_params(), strict=True):
            linear.weight.copy_(weight[member].T)
            linear.bias.copy_(bias[member, 0])


def reference_like(ours: OPTAgent, config: Config) -> ReferenceAgent:
    """A reference agent holding the same weights as ``ours`` (online and target networks)."""
    ref = ReferenceAgent(OBS_DIM, ACT_DIM, config)
    backbone = ours.backbone
    assert ours.q_on is not None
    load_linear_layers(ref.actor, backbone.actor.net, 0)
    load_linear_layers(ref.actor_target, backbone.actor_target.net, 0)
    twins = ((ref.q_off, backbone.critic, backbone.critic_target), (ref.q_on, ours.q_on, ours.q_on_target))
    for twin, critic, target in twins:
        for member, (q, q_target) in enumerate(((twin.q1, twin.q1_target), (twin.q2, twin.q2_target))):
            load_linear_layers(q.net, critic, member)
            load_linear_layers(q_target.net, target, member)
    load_linear_layers(ref.density.net, ours.density.net, 0)
    return ref


def random_batches(n: int, seed: int) -> list[Transitions]:
    gen = torch.Generator().manual_seed(seed)
    return [
        Transitions(
            torch.randn(256, OBS_DIM, generator=gen),
            torch.rand(256, ACT_DIM, generator=gen) * 2 - 1,
            torch.randn(256, generator=gen),
            torch.randn(256, OBS_DIM, generator=gen),
            (torch.rand(256, generator=gen) < 0.1).float(),
        )
        for _ in range(n)
    ]


def as_batch(t: Transitions) -> Batch:
    return Batch(t.obs, t.action, t.reward, t.next_obs, t.done)


def test_reference_finetune_update_matches_opt_fast() -> None:
    """Two fine-tuning updates (the second with the actor step): same losses and priorities as OPTAgent."""
    torch.manual_seed(0)
    config = bench_config(policy_noise=0.0)  # deterministic targets: both sides must agree exactly
    ours = OPTAgent(OBS_DIM, ACT_DIM, config)
    ref = reference_like(ours, config)
    ours.start_finetuning()
    ref.start_finetuning()
    for step in range(2):
        off, on, batch = random_batches(3, seed=step)
        our_info, our_priorities = ours.finetune_update(
            as_batch(off), as_batch(on), as_batch(batch), kappa=0.3, online_progress=0.0, step=step
        )
        ref_info, ref_priorities = ref.finetune_update(off, on, batch, 0.3, step)
        assert set(ref_info) == set(our_info)
        for key, value in ref_info.items():
            assert value == pytest.approx(float(our_info[key]), rel=1e-4), key
        np.testing.assert_allclose(ref_priorities, our_priorities.numpy(), rtol=1e-4)
    assert "actor_loss" in ref_info  # step 1 ran the actor and Polyak updates


def test_reference_pretrain_update_matches_opt_fast() -> None:
    """Two meta-adaptation updates of Q_on (the second moves its targets): same losses and Q_on as OPTAgent."""
    torch.manual_seed(0)
    config = bench_config(policy_noise=0.0)
    ours = OPTAgent(OBS_DIM, ACT_DIM, config)
    ref = reference_like(ours, config)
    for step in range(2):
        off, on = random_batches(2, seed=10 + step)
        our_info = ours.pretrain_update(as_batch(off), as_batch(on), step)
        ref_info = ref.pretrain_update(off, on, step)
        assert set(ref_info) == set(our_info)
        for key, value in ref_info.items():
            assert value == pytest.approx(float(our_info[key]), rel=1e-4), key
    assert ours.q_on is not None
    for member, q in enumerate((ref.q_on.q1_target, ref.q_on.q2_target)):
        for linear, (weight, _, _, _) in zip([m for m in q.net if isinstance(m, nn.Linear)],
                                             ours.q_on_target.layer_params(), strict=True):
            torch.testing.assert_close(linear.weight, weight[member].T, rtol=1e-4, atol=1e-6)


def test_reference_offline_update_matches_opt_fast() -> None:
    torch.manual_seed(0)
    config = bench_config(policy_noise=0.0)
    ours = OPTAgent(OBS_DIM, ACT_DIM, config)
    ref = reference_like(ours, config)
    infos = []
    for step, batch in enumerate(random_batches(3, seed=2)):
        our_info = ours.backbone.offline_update(as_batch(batch), step)
        ref_info = ref.offline_update(batch, step)
        assert set(ref_info) == set(our_info)
        for key, value in ref_info.items():
            assert value == pytest.approx(float(our_info[key]), rel=1e-4), key
        infos.append(ref_info)
    assert [set(i) for i in infos] == [{"critic_loss"}, {"critic_loss", "actor_loss"}, {"critic_loss"}]


def test_reference_replay_inserts_online_rows_at_max_priority() -> None:
    replay = NumpyReplay(6, OBS_DIM, ACT_DIM, prioritized=True)
    rows = {"observations": np.zeros((4, OBS_DIM), np.float32), "actions": np.zeros((4, ACT_DIM), np.float32),
            "rewards": np.arange(4, dtype=np.float32), "next_observations": np.zeros((4, OBS_DIM), np.float32),
            "terminals": np.zeros(4, bool)}
    replay.load_dataset(rows)
    assert replay.tree.total == 4.0
    replay.update_priorities(np.array([0, 2]), np.array([3.0, 0.5]))
    replay.add(np.ones(OBS_DIM), np.ones(ACT_DIM), 7.0, np.ones(OBS_DIM), True)
    assert replay.tree.total == 3.0 + 1.0 + 0.5 + 1.0 + 3.0
    # Masses in [7.5, 8.5) lie in row 4's interval [5.5, 8.5).
    assert replay.tree.find(np.array([7.5, 8.4])).tolist() == [4, 4]
    batch = replay.batch(np.array([4, 1]))
    assert batch.reward.tolist() == [7.0, 1.0] and batch.done.tolist() == [1.0, 0.0]
    replay.add(np.ones(OBS_DIM), np.ones(ACT_DIM), 0.0, np.ones(OBS_DIM), False)
    with pytest.raises(ValueError, match="full"):
        replay.add(np.ones(OBS_DIM), np.ones(ACT_DIM), 0.0, np.ones(OBS_DIM), False)


def test_item_sumtree_matches_numpy_tree() -> None:
    """The peer's item-by-item tree holds the same sums and finds the same rows as the vectorised one."""
    rng = np.random.default_rng(0)
    ours, peer = NumpySumTree(1000), ItemSumTree(1000)
    for tree in (ours, peer):
        tree.fill(np.ones(900))
    indices = rng.choice(900, 256, replace=False)
    priorities = rng.uniform(0.1, 3.0, 256)
    ours.update(indices, priorities)
    peer.update(indices, priorities)
    np.testing.assert_allclose(peer.tree, ours.tree, rtol=1e-12)
    masses = rng.uniform(0.0, ours.total, 512)
    assert peer.find(masses).tolist() == ours.find(masses).tolist()
    assert peer.sample_stratified(256, np.random.default_rng(1)).tolist() == \
        ours.sample_stratified(256, np.random.default_rng(1)).tolist()


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dataset() -> dict[str, np.ndarray]:
    """1M random transitions with Hopper's sizes, as D4RL's qlearning_dataset arrays (throughput only)."""
    rng = np.random.default_rng(0)
    return {
        "observations": rng.standard_normal((OFFLINE_ROWS, OBS_DIM), dtype=np.float32),
        "actions": rng.uniform(-1.0, 1.0, (OFFLINE_ROWS, ACT_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(OFFLINE_ROWS, dtype=np.float32),
        "next_observations": rng.standard_normal((OFFLINE_ROWS, OBS_DIM), dtype=np.float32),
        "terminals": rng.random(OFFLINE_ROWS) < 1e-3,
    }


def finetuning_trainer(data: dict[str, np.ndarray], run_dir: Path, compile: bool) -> Trainer:
    """A Trainer at the start of fine-tuning, its online buffer holding one batch (updates can start)."""
    offline = OfflineDataset(
        data["observations"], data["actions"], data["next_observations"], data["rewards"], data["terminals"],
        path=Path("random-hopper-rows"), source="generated", name=parse_dataset_name("hopper-random"),
    )
    trainer = Trainer([bench_config(compile=compile)], [run_dir], offline)
    trainer.agent.start_finetuning()
    for _ in range(trainer.config.batch_size):
        trainer._env_step()
    return trainer


def trainer_step(trainer: Trainer) -> Callable[[], None]:
    """Trainer._finetune's body: one env step, then UTD updates."""

    def step() -> None:
        trainer._env_step()
        for _ in range(trainer.config.utd):
            trainer._finetune_update()

    return step


@pytest.fixture(scope="module")
def eager_trainer(dataset: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    return finetuning_trainer(dataset, tmp_path_factory.mktemp("eager"), compile=False)


@pytest.fixture(scope="module")
def compiled_trainer(dataset: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    # On CPU `--compile` runs eagerly (opt_fast.runtime.compile_choice); this side measures the compiled updates
    # that rule is based on.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPT_FAST_COMPILE_ON_CPU", "1")
        trainer = finetuning_trainer(dataset, tmp_path_factory.mktemp("compiled"), compile=True)
    # The first two env steps (10 updates, actor step included) compile every graph.
    started = time.perf_counter()
    step = trainer_step(trainer)
    step()
    step()
    _COMPILE_SECONDS["compiled"] = time.perf_counter() - started
    return trainer


@pytest.fixture(scope="module")
def reference(dataset: dict[str, np.ndarray]) -> ReferenceFinetuner:
    config = bench_config()
    finetuner = ReferenceFinetuner(config, make_env("hopper", config.env_version), dataset)
    for _ in range(config.batch_size):
        finetuner.env_step()
    return finetuner


@pytest.fixture(scope="module")
def oema_peer(dataset: dict[str, np.ndarray]) -> OEMAPeerFinetuner:
    config = bench_config()
    finetuner = OEMAPeerFinetuner(config, make_env("hopper", config.env_version), dataset)
    for _ in range(config.batch_size):
        finetuner.env_step()
    return finetuner


def measure(benchmark: Any, group: str, side: str, fn: Callable[[], None], rounds: int) -> None:
    """``rounds`` timed rounds of two calls each (one policy-delay cycle), after 3 warm-up rounds."""
    benchmark.extra_info["loadavg_1min_before"] = os.getloadavg()[0]
    benchmark.pedantic(fn, rounds=rounds, iterations=2, warmup_rounds=3)
    benchmark.extra_info["loadavg_1min_after"] = os.getloadavg()[0]
    _RESULTS[group, side] = benchmark


# ------------------------------------------------------------------------------------------ benchmarks
@pytest.mark.benchmark(group=OFFLINE)
def test_offline_opt_fast(benchmark: Any, eager_trainer: Trainer) -> None:
    trainer, steps = eager_trainer, iter(range(10**9))

    def update() -> None:
        trainer.agent.backbone.offline_update(trainer._sample_uniform("offline"), next(steps))

    measure(benchmark, OFFLINE, "opt_fast", update, rounds=100)


@pytest.mark.benchmark(group=OFFLINE)
def test_offline_reference(benchmark: Any, reference: ReferenceFinetuner) -> None:
    agent, replay, steps = reference.agent, reference.offline, iter(range(10**9))

    def update() -> None:
        agent.offline_update(replay.batch(replay.sample_uniform(reference.config.batch_size, reference.rng)),
                             next(steps))

    measure(benchmark, OFFLINE, "reference", update, rounds=100)


@pytest.mark.benchmark(group=PRETRAIN)
def test_pretrain_opt_fast(benchmark: Any, eager_trainer: Trainer) -> None:
    trainer, steps = eager_trainer, iter(range(10**9))

    def update() -> None:
        trainer.agent.pretrain_update(trainer._sample_uniform("offline"), trainer._sample_uniform("online"),
                                      next(steps))

    measure(benchmark, PRETRAIN, "opt_fast", update, rounds=50)


@pytest.mark.benchmark(group=PRETRAIN)
def test_pretrain_reference(benchmark: Any, reference: ReferenceFinetuner) -> None:
    agent, size, rng, steps = reference.agent, reference.config.batch_size, reference.rng, iter(range(10**9))

    def update() -> None:
        agent.pretrain_update(reference.offline.batch(reference.offline.sample_uniform(size, rng)),
                              reference.online.batch(reference.online.sample_uniform(size, rng)), next(steps))

    measure(benchmark, PRETRAIN, "reference", update, rounds=50)


@pytest.mark.benchmark(group=FINETUNE)
def test_finetune_opt_fast(benchmark: Any, eager_trainer: Trainer) -> None:
    measure(benchmark, FINETUNE, "opt_fast", trainer_step(eager_trainer), rounds=30)


@pytest.mark.benchmark(group=FINETUNE)
def test_finetune_reference(benchmark: Any, reference: ReferenceFinetuner) -> None:
    measure(benchmark, FINETUNE, "reference", reference.step, rounds=30)


@pytest.mark.benchmark(group=FINETUNE)
def test_finetune_oema_peer(benchmark: Any, oema_peer: OEMAPeerFinetuner) -> None:
    measure(benchmark, FINETUNE, "oema_peer", oema_peer.step, rounds=30)


@pytest.mark.benchmark(group=COMPILE)
def test_finetune_eager(benchmark: Any, eager_trainer: Trainer) -> None:
    measure(benchmark, COMPILE, "eager", trainer_step(eager_trainer), rounds=30)


@pytest.mark.benchmark(group=COMPILE)
def test_finetune_compiled(benchmark: Any, compiled_trainer: Trainer) -> None:
    benchmark.extra_info["compile_seconds"] = round(_COMPILE_SECONDS["compiled"], 2)
    measure(benchmark, COMPILE, "compiled", trainer_step(compiled_trainer), rounds=30)


@pytest.mark.parametrize(
    "group, side, baseline, target",
    [
        (OFFLINE, "opt_fast", "reference", TARGET_OFFLINE_VS_REFERENCE),
        (FINETUNE, "opt_fast", "reference", TARGET_FINETUNE_VS_REFERENCE),
        (FINETUNE, "opt_fast", "oema_peer", TARGET_FINETUNE_VS_PEER),
        (PRETRAIN, "opt_fast", "reference", TARGET_PRETRAIN_VS_REFERENCE),
        (COMPILE, "compiled", "eager", TARGET_COMPILED_VS_EAGER),
    ],
)
def test_ratio(group: str, side: str, baseline: str, target: float, capsys: pytest.CaptureFixture[str]) -> None:
    """Throughput of ``side`` over ``baseline`` (ratio of median times) must reach ``target``."""
    fixtures = {name: _RESULTS.get((group, name)) for name in (side, baseline)}
    if any(f is None or not f.stats for f in fixtures.values()):
        pytest.skip(f"needs both '{group}' benchmarks measured in this session")
    stats = {name: f.stats.stats for name, f in fixtures.items()}
    ratio = stats[baseline].median / stats[side].median
    fixtures[side].extra_info[f"speedup_vs_{baseline}"] = round(ratio, 3)
    unit = UNIT[group]
    lines = [f"\n{group} (load average now {os.getloadavg()[0]:.2f}):"]
    for name, s in stats.items():
        lines.append(f"  {name:>9}: median {s.median * 1e6:9.0f} us per {unit} ({1.0 / s.median:7.1f} {unit}s/s), "
                     f"min {s.min * 1e6:9.0f} us")
    if "compiled" in fixtures:
        lines.append(f"  compile time (first 2 env steps, 10 updates): {_COMPILE_SECONDS['compiled']:.1f} s")
    lines.append(f"  throughput ratio {side}/{baseline} (medians): {ratio:.2f}x (target >= {target}x)")
    with capsys.disabled():
        print("\n".join(lines))
    if group == COMPILE and not torch.cuda.is_available():
        # On CPU `--compile` runs eagerly because compiling does not win there: check that it still does not.
        assert ratio < 1.0 / target, (f"{group}: compiled is {ratio:.2f}x eager on this CPU, so --compile should "
                                      "compile here (opt_fast.runtime.compile_choice)")
        return
    assert ratio >= target, f"{group}: {side} is {ratio:.2f}x {baseline}, target {target}x"
