"""Seeds as a batch dimension: a batched run's seeds behave as their one-seed runs, checkpoint together, resume."""
import os

import numpy as np
import pytest
import torch

from opt_fast.agents.opt import OPTAgent, merge_seeds, split_seeds
from opt_fast.pipeline import open_run, open_seed_batch
from opt_fast.io import read_jsonl
from opt_fast.metrics import evaluations, reproducible_records
from test_pipeline import dataset, tiny_config  # noqa: F401

SEEDS = (0, 1)


def batch_configs(**overrides):
    return [tiny_config(seed=seed, seed_batch=SEEDS, **overrides) for seed in SEEDS]


def seed_params(trainer, index: int) -> dict[str, torch.Tensor]:
    state = trainer.agent.seed_state_dicts()[index]
    return {f"{name}.{key}": value for name, module in trainer.agent.modules().items()
            for key, value in state[name].items()}


def test_seed_state_split_and_merge_are_inverse():
    agent = OPTAgent(3, 2, tiny_config(), seeds=[4, 5, 6])
    for module in agent.modules().values():  # every network holds one member block per seed
        assert all(p.shape[0] % 3 == 0 for p in module.parameters())
    states = agent.seed_state_dicts()
    alone = OPTAgent(3, 2, tiny_config(), seeds=[5])
    for name, module_state in alone.seed_state_dicts()[0].items():
        for key, value in module_state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(states[1][name][key], value, rtol=0, atol=0, msg=f"{name}.{key}")
    merged = merge_seeds(states)
    again = split_seeds(merged, 3)
    for i in range(3):
        for name in states[i]:
            for key, value in states[i][name].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(again[i][name][key], value)


def test_each_seed_of_a_batch_follows_its_one_seed_run(tmp_path, dataset):  # noqa: F811
    """Without target-policy noise (the only draw the seeds share) a batched seed computes what its one-seed run
    computes: same initial networks, same samples, same env steps; the result agrees to float rounding."""
    batched = open_seed_batch(batch_configs(policy_noise=0.0), [tmp_path / f"b{s}" for s in SEEDS], dataset,
                              resume=False)
    singles = [open_run(tiny_config(seed=seed, policy_noise=0.0), tmp_path / f"s{seed}", dataset, resume=False)
               for seed in SEEDS]
    for index, single in enumerate(singles):
        for name, value in seed_params(single, 0).items():
            torch.testing.assert_close(seed_params(batched, index)[name], value, rtol=0, atol=0, msg=name)
    summaries = batched.run()
    for index, single in enumerate(singles):
        [summary] = single.run()
        assert summaries[index]["seed"] == summary["seed"] == SEEDS[index]
        assert summaries[index]["seed_batch"] == list(SEEDS) and summary["seed_batch"] == [SEEDS[index]]
        # The same transitions were collected: the online buffers agree row for row.
        rows = single.runs[0].online_buffer.size
        assert batched.runs[index].online_buffer.size == rows == 100
        got = batched.runs[index].online_buffer.gather(np.arange(rows))
        want = single.runs[0].online_buffer.gather(np.arange(rows))
        for key in ("obs", "action", "reward"):
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-4, err_msg=key)
        for name, value in seed_params(single, 0).items():
            torch.testing.assert_close(seed_params(batched, index)[name], value, rtol=1e-3, atol=1e-4, msg=name)
        batch_scores = [r["score"] for r in evaluations(read_jsonl(tmp_path / f"b{SEEDS[index]}" / "metrics.jsonl"))]
        single_scores = [r["score"] for r in evaluations(read_jsonl(tmp_path / f"s{SEEDS[index]}" / "metrics.jsonl"))]
        np.testing.assert_allclose(batch_scores, single_scores, rtol=1e-3, atol=1e-3)
    # The seeds are independent agents: their parameters differ.
    assert not torch.equal(seed_params(batched, 0)["critic.weights.0"], seed_params(batched, 1)["critic.weights.0"])


def test_interrupted_batch_resumes_to_the_same_result_even_between_renames(tmp_path, dataset, monkeypatch):  # noqa: F811
    configs = batch_configs()
    whole = open_seed_batch(configs, [tmp_path / f"whole{s}" for s in SEEDS], dataset, resume=False)
    whole.run()

    dirs = [tmp_path / f"cut{s}" for s in SEEDS]
    trainer = open_seed_batch(configs, dirs, dataset, resume=False)
    original_periodic, real_replace = trainer._periodic, os.replace

    def crash(step, bar):
        original_periodic(step, bar)
        if trainer.progress.phase == "finetune" and trainer.progress.online_step >= 60:
            # The next checkpoint is interrupted after the first seed's file is renamed into place.
            calls = []

            def replace_once(src, dst):
                if str(src).endswith("latest.pt.next"):
                    calls.append(src)
                    if len(calls) > 1:
                        raise KeyboardInterrupt
                real_replace(src, dst)

            monkeypatch.setattr(os, "replace", replace_once)
            trainer.save_checkpoint()

    trainer._periodic = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(os, "replace", real_replace)
    assert (dirs[0] / "checkpoints" / "commit.json").exists() and (dirs[1] / "checkpoints" / "latest.pt.next").exists()

    resumed = open_seed_batch(configs, dirs, dataset, resume=True)
    assert resumed.progress.phase == "finetune" and not (dirs[0] / "checkpoints" / "commit.json").exists()
    assert [run.progress.online_step for run in resumed.runs] == [60, 60]
    resumed.run()
    for index in range(len(SEEDS)):
        for name, value in seed_params(whole, index).items():
            torch.testing.assert_close(seed_params(resumed, index)[name], value, rtol=0, atol=0, msg=name)
        assert reproducible_records(tmp_path / f"whole{SEEDS[index]}" / "metrics.jsonl") == \
            reproducible_records(dirs[index] / "metrics.jsonl")


def test_a_seed_batch_needs_matching_configs(tmp_path, dataset):  # noqa: F811
    mixed = [tiny_config(seed=0, seed_batch=SEEDS), tiny_config(seed=1, seed_batch=SEEDS, utd=3)]
    with pytest.raises(ValueError, match="need the same settings but the seed"):
        open_seed_batch(mixed, [tmp_path / "a", tmp_path / "b"], dataset, resume=False)
    unnamed = [tiny_config(seed=0), tiny_config(seed=1)]
    with pytest.raises(ValueError, match="seed_batch=\\[0, 1\\]"):
        open_seed_batch(unnamed, [tmp_path / "a", tmp_path / "b"], dataset, resume=False)
    with pytest.raises(ValueError, match="train the batch together"):
        open_run(batch_configs()[1], tmp_path / "c", dataset, resume=False)
    # A batched seed's identity differs from its run of its own: their noise streams differ.
    assert batch_configs()[1].digest() != tiny_config(seed=1).digest()
