"""Config fields carry what they are (phase, role, bounds, help); the cache keys, the run's hash, an experiment's
setting hash and ``--help`` are derived from it. The derived key sets equal the lists they replace, so every run
directory and cache keeps its name."""
import argparse
import dataclasses
import json
import re
from pathlib import Path

from opt_fast import ablate, cli
from opt_fast.config import (BOOKKEEPING_FIELDS, COLLECT_FIELDS, OFFLINE_FIELDS, PRETRAIN_FIELDS, Config,
                             config_differences, resolve)

RESULTS = Path(__file__).resolve().parents[1] / "results"

# The hand-kept lists of before (opt-fast 0.1.0 at 7f0c2f7).
OLD_OFFLINE = (
    "env", "dataset", "env_version", "env_backend", "eval_every", "eval_episodes", "seed", "seed_batch",
    "offline_steps", "hidden", "actor_lr", "critic_lr", "batch_size", "gamma", "tau",
    "policy_noise", "noise_clip", "policy_delay", "bc_alpha", "device",
    "backbone", "spot_lambda", "vae_steps", "vae_hidden", "vae_lr", "vae_beta", "layer_norm", "actor_init",
    "critic_init", "antmaze_reward",
)
OLD_COLLECT = OLD_OFFLINE + (
    "opt", "env_version", "critic_backend", "exploration_noise", "online_steps", "online_gamma", "replay_ring",
    "replay_ring_capacity", "eval_every", "eval_episodes",
)
OLD_PRETRAIN = OLD_COLLECT + ("n_tau", "pretrain_data", "meta_adaptation", "meta_loss_weight", "meta_inner_lr")
OLD_DIGEST_EXCLUDED = {"extra", "compile", "torch_threads", "log_every"}
# Fields added since, hashed only away from their default (``hashed_at_default=False``).
ADDED_OFFLINE = {"tau_scaling"}
OLD_ABLATE_BOOKKEEPING = {"extra", "compile", "torch_threads", "log_every", "device", "critic_backend"}


def test_derived_keys_equal_the_lists_they_replace():
    assert set(OFFLINE_FIELDS) == set(OLD_OFFLINE) | ADDED_OFFLINE
    assert set(COLLECT_FIELDS) == set(OLD_COLLECT) | ADDED_OFFLINE
    assert set(PRETRAIN_FIELDS) == set(OLD_PRETRAIN) | ADDED_OFFLINE
    assert set(BOOKKEEPING_FIELDS) == OLD_DIGEST_EXCLUDED
    assert ablate._BOOKKEEPING == OLD_ABLATE_BOOKKEEPING


def test_the_digests_are_the_ones_of_before():
    """Hashes of a resolved config computed the old way (explicit lists) and the new way agree; a field added
    since changes them only away from its default."""
    config = resolve(Config(), {"env": "hopper-medium-replay", "budget": "smoke", "seed": 3}, "medium-replay",
                     "hopper")
    values = config.to_json()
    old_keys = tuple(sorted(set(values) - OLD_DIGEST_EXCLUDED - ADDED_OFFLINE))
    assert config.digest() == config.digest(old_keys)
    for old, new in ((OLD_OFFLINE, OFFLINE_FIELDS), (OLD_COLLECT, COLLECT_FIELDS), (OLD_PRETRAIN, PRETRAIN_FIELDS)):
        assert config.digest(old) == config.digest(new)
    scaled = dataclasses.replace(config, tau_scaling="budget")
    assert scaled.digest() != config.digest()
    written_before = {k: v for k, v in values.items() if k not in ADDED_OFFLINE}  # a config.json of before
    assert config_differences(written_before, scaled.to_json()) == ["--tau-scaling ('none' there, 'budget' here)"]
    assert config_differences(written_before, values) == []
    assert scaled.digest(OFFLINE_FIELDS) != config.digest(OFFLINE_FIELDS)


def test_every_kept_run_keeps_its_name():
    """The run directories under results/ are named by the digest of their config.json, written before later
    fields existed: the digest of each, read back today, is still its name."""
    configs = sorted(RESULTS.glob("**/config.json"))
    assert len(configs) >= 15
    for path in configs:
        config = Config.from_json(json.loads(path.read_text()))
        assert f"-{config.digest()}-" in path.parent.name, path


def test_every_field_says_what_it_is():
    for f in dataclasses.fields(Config):
        assert f.metadata["role"] in ("setting", "execution", "bookkeeping"), f.name
        assert (f.metadata["phase"] is None) == (f.metadata["role"] == "bookkeeping"), f.name


def test_every_option_of_train_has_help_beyond_its_default():
    parser = argparse.ArgumentParser()
    cli.add_train_arguments(parser)
    docs = cli.field_docs()
    assert set(docs) >= {f.name for f in dataclasses.fields(Config)}  # every field has a docstring
    for action in parser._actions:
        if action.dest == "help":
            continue
        text = re.sub(r"\s*\(default [^)]*\)\s*$", "", action.help or "").strip()
        assert text, f"{action.option_strings} has no help beyond its default"
