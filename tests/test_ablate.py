"""Ablation grids: which runs they make, that they share the offline phase and the collection, that a shorter
collection branched from a longer one equals its own, and that a killed run resumes while a finished one is kept."""
import json
from pathlib import Path

import pytest
import torch
from test_sweep import TINY, write_tiny_dataset

from opt_fast import pipeline
from opt_fast.ablate import (AblationSpec, check_overrides, configure, describe, expand, parse_seeds, setting_hash,
                             variant_overrides)
from opt_fast.runs import run_dir_for
from opt_fast.data.d4rl import load_dataset
from opt_fast.sweep import run_sweep
from opt_fast.metrics import reproducible_records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "hopper_random-v2.hdf5")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(dataset: Path, **changes) -> AblationSpec:
    values = dict(datasets=["hopper-random"], seeds=[0], variants=variant_overrides(["opt", "baseline"]),
                  budget="smoke", n_tau=[0, 20, 40], n_pretrain=[0, 10], base={**TINY, "dataset": str(dataset)})
    return AblationSpec(**{**values, **changes})


def test_grid_variants_and_the_n_tau_zero_rule(dataset):
    variants = variant_overrides(["opt", "baseline", "new-critic", "pretrain-online", "no-meta"])
    configs, skipped = expand(spec(dataset, seeds=[0, 1], variants=variants))
    per_seed = sorted((describe(c), c.n_tau, c.n_pretrain, c.pretrain_data) for c in configs if c.seed == 0)
    # (The smoke budget's N_tau and N_pretrain are 100 and 50, so every cell here names both.)
    assert per_seed == sorted([
        ("TD3", 100, 50, "both"),  # the baseline once, its unused settings at the budget's values
        ("TD3+OPT N_tau=0, N_pretrain=0", 0, 0, "both"),  # also new-critic's N_tau=0 cell
        ("TD3+OPT N_tau=0, N_pretrain=10, Q_on on offline data", 0, 10, "offline"),  # also no-meta's N_tau=0 cell
        ("TD3+OPT N_tau=20, N_pretrain=0", 20, 0, "both"),  # also pretrain-online's and no-meta's
        ("TD3+OPT N_tau=20, N_pretrain=10", 20, 10, "both"),
        ("TD3+OPT N_tau=20, N_pretrain=10, Q_on on online data", 20, 10, "online"),
        ("TD3+OPT N_tau=20, N_pretrain=10, no meta-adaptation", 20, 10, "both"),
        ("TD3+OPT N_tau=40, N_pretrain=0", 40, 0, "both"),
        ("TD3+OPT N_tau=40, N_pretrain=10", 40, 10, "both"),
        ("TD3+OPT N_tau=40, N_pretrain=10, Q_on on online data", 40, 10, "online"),
        ("TD3+OPT N_tau=40, N_pretrain=10, no meta-adaptation", 40, 10, "both"),
    ])
    assert len(configs) == 2 * len(per_seed) and len({c.digest() for c in configs}) == len(configs)
    assert skipped == [f"hopper-random seed {s} pretrain-online N_tau=0 N_pretrain=10: N_tau=0 leaves no online "
                       "data to pre-train Q_on on" for s in (0, 1)]
    with pytest.raises(ValueError, match="hopper-random seed 0 opt N_tau=100 N_pretrain=0: --n-tau .100. must be "
                                         "smaller than --online-steps .100."):
        expand(spec(dataset, n_tau=[100]))


def test_seeds_of_one_experiment_share_its_hash_whatever_their_batch():
    base = {"budget": "quick"}
    alone = configure("walker2d-random", {**base, "seed": 0})
    batched = configure("walker2d-random", {**base, "seed": 3, "seed_batch": (3, 4)})
    assert setting_hash(alone) == setting_hash(batched)
    assert setting_hash(configure("walker2d-random", {**base, "gamma": 0.98})) != setting_hash(alone)
    assert setting_hash(configure("walker2d-random", {**base, "tau_scaling": "budget"})) != setting_hash(alone)


def test_labels_follow_the_budget_defaults():
    assert describe(configure("hopper-medium-replay", {"budget": "quick"})) == "TD3+OPT"
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "opt": False})) == "TD3"
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "opt": False, "tau_scaling": "budget"})) \
        == "TD3 tau scaled with the budget"
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "tau_scaling": "budget", "n_tau": 300})) \
        == "TD3+OPT tau scaled with the budget, N_tau=300"
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "meta_loss_weight": "one"})) \
        == "TD3+OPT meta loss weight one"
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "meta_inner_lr": 3e-5})) \
        == "TD3+OPT alpha_in=3e-05"
    # Without meta-adaptation there is no inner step: alpha_in is not read, so not named.
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "meta_inner_lr": 3e-5,
                                                       "meta_adaptation": False})) == "TD3+OPT no meta-adaptation"
    # medium-replay's schedule is 0.1 -> 0.9; the quick budget scales the 150k ramp to its fine-tuning length.
    assert describe(configure("hopper-medium-replay", {"budget": "quick", "kappa_ramp_share": 0.0})) \
        == "TD3+OPT kappa 0.1->0.9 over 0% of fine-tuning from the first update"


@pytest.mark.parametrize("text,seeds", [("0-4", [0, 1, 2, 3, 4]), ("3", [3]), ("0,2,5", [0, 2, 5]),
                                        ("0-1,7", [0, 1, 7])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a-b", "1,1", "0-1,1"])
def test_bad_seeds_are_refused(text):
    with pytest.raises(ValueError, match="seeds"):
        parse_seeds(text)


def test_overrides_are_type_checked():
    assert check_overrides({"hidden": [8, 8], "critic_lr": 1, "opt": False}, "x") == \
        {"hidden": (8, 8), "critic_lr": 1.0, "opt": False}
    for bad, message in [({"utd": True}, "utd must be of type int"), ({"opt": 1}, "opt must be of type bool"),
                         ({"nope": 1}, "unknown config key 'nope'"), ({"env": "hopper"}, "'env' is set by the sweep")]:
        with pytest.raises(ValueError, match=f"where: {message}"):
            check_overrides(bad, "where")


class Counter:
    """Counts offline phases and env steps per phase of every trainer in this process."""

    def __init__(self, monkeypatch):
        self.offline_phases = 0
        self.env_steps: dict[str, int] = {}
        offline, env_step = pipeline.Trainer._offline, pipeline.Trainer._env_step

        def counted_offline(trainer):
            self.offline_phases += 1
            offline(trainer)

        def counted_env_step(trainer):
            phase = trainer.progress.phase
            self.env_steps[phase] = self.env_steps.get(phase, 0) + 1
            env_step(trainer)

        monkeypatch.setattr(pipeline.Trainer, "_offline", counted_offline)
        monkeypatch.setattr(pipeline.Trainer, "_env_step", counted_env_step)


def test_ablation_shares_the_offline_phase_and_branches_shorter_collections(tmp_path, dataset, monkeypatch):
    counter = Counter(monkeypatch)
    configs, _ = expand(spec(dataset))
    summaries = run_sweep(configs, tmp_path / "runs", workers=1)
    assert len(summaries) == 7
    # One offline phase; one collection (the 40-step one); N_tau=20 took its first 20 steps.
    assert counter.offline_phases == 1
    assert counter.env_steps["collect"] == 40
    assert counter.env_steps["finetune"] == sum(100 - (c.n_tau if c.opt else 0) for c in configs)
    # A branched run equals the same run done alone, record for record.
    branched = next(c for c in configs if c.opt and c.n_tau == 20 and c.n_pretrain == 10)
    alone = run_sweep([branched], tmp_path / "alone", workers=1)
    assert counter.offline_phases == 2 and counter.env_steps["collect"] == 60
    [(alone_dir, alone_summary)] = alone.items()
    branched_dir = run_dir_for((tmp_path / "runs").resolve(), branched, load_dataset(dataset).content_digest)
    assert reproducible_records(Path(alone_dir) / "metrics.jsonl") == reproducible_records(branched_dir / "metrics.jsonl")
    assert summaries[str(branched_dir)]["final_score"] == alone_summary["final_score"]


def test_a_killed_run_resumes_and_a_finished_one_is_never_run_again(tmp_path, dataset, monkeypatch):
    configs, _ = expand(spec(dataset, variants=variant_overrides(["opt"]), n_tau=[20, 40], n_pretrain=[10]))
    victim = next(c for c in configs if c.n_tau == 20)
    periodic = pipeline.Trainer._periodic

    def killed_at_80(trainer, step, bar):
        periodic(trainer, step, bar)
        if trainer.config == victim and trainer.progress.phase == "finetune" and step >= 80:
            raise KeyboardInterrupt  # like a kill: nothing after this step is saved

    monkeypatch.setattr(pipeline.Trainer, "_periodic", killed_at_80)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(configs, tmp_path / "runs", workers=1)
    monkeypatch.setattr(pipeline.Trainer, "_periodic", periodic)

    counter = Counter(monkeypatch)
    summaries = run_sweep(configs, tmp_path / "runs", workers=1)
    # The victim resumed from its checkpoint at env step 75 (checkpoint_every=15); the other run went on after
    # its collection; nothing was redone.
    assert counter.offline_phases == 0 and "collect" not in counter.env_steps
    assert counter.env_steps["finetune"] == (100 - 75) + (100 - 40)
    alone = run_sweep([victim], tmp_path / "alone", workers=1)
    [(alone_dir, alone_summary)] = alone.items()
    victim_dir = run_dir_for((tmp_path / "runs").resolve(), victim, load_dataset(dataset).content_digest)
    assert reproducible_records(victim_dir / "metrics.jsonl") == reproducible_records(Path(alone_dir) / "metrics.jsonl")

    def never(*args, **kwargs):
        raise AssertionError("a finished run was opened again")

    monkeypatch.setattr(pipeline, "open_run", never)
    again = run_sweep(configs, tmp_path / "runs", workers=1)
    assert again == summaries
    assert json.loads((victim_dir / "summary.json").read_text()) == summaries[str(victim_dir)]


def test_without_a_grid_each_dataset_keeps_its_own_preset():
    """The SPOT families' budgets differ from MuJoCo's: door at the cpu budget pre-trains Q_on 250 updates."""
    spec = AblationSpec(datasets=["door-cloned", "hopper-medium"], seeds=[0], variants=variant_overrides(["opt"]),
                        budget="cpu")
    configs, skipped = expand(spec)
    by_env = {config.env: config for config in configs}
    assert not skipped and set(by_env) == {"door-cloned", "hopper-medium"}
    assert (by_env["door-cloned"].n_tau, by_env["door-cloned"].n_pretrain) == (100, 250)
    assert (by_env["hopper-medium"].n_tau, by_env["hopper-medium"].n_pretrain) == (100, 500)
    assert [describe(config) for config in configs] == ["SPOT+OPT", "TD3+OPT"]
