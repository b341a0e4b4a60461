"""What a run is called and what it trains on: the resolved config of ``--env`` (its family's presets), the run
directory named by the config hash and the data's content digest, the phase caches' directory, and the data-source
policy (``--dataset``, a Minari dataset, the D4RL file, else locally generated data)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from opt_fast.config import BOOKKEEPING_FIELDS, DATA_BUDGET, Config, config_differences, resolve
from opt_fast.datagen import generate_data
from opt_fast.tasks import resolve_task


def resolve_for(base: Config, overrides: dict[str, Any]) -> Config:
    """The run's config with the presets of its dataset (family and kind of ``--env``)."""
    task = resolve_task(overrides.get("env", base.env))
    return resolve(base, overrides, task.kind, task.family)


def run_dir_for(out: Path, config: Config, data_digest: str) -> Path:
    """A run's directory: named by its dataset, variant, budget and seed, then by the hash of its configuration and
    the content digest of its data (``OfflineDataset.content_digest``), so other data never continues a run."""
    return out / config.task.label / f"{_run_prefix(config)}-{config.digest()}-{data_digest[:12]}"


def _run_prefix(config: Config) -> str:
    variant = "opt" if config.opt else config.backbone
    return f"{variant}-{config.budget}-seed{config.seed}"


def differing_runs(out: Path, config: Config, data_digest: str) -> list[str]:
    """For each existing run of the same dataset, variant, budget and seed as ``config``'s (another run directory),
    the settings in which it differs: why ``--resume`` found nothing to continue."""
    run_dir = run_dir_for(out, config, data_digest)
    wanted = config.to_json()
    found: list[str] = []
    for stored_path in sorted(run_dir.parent.glob(f"{_run_prefix(config)}-*/config.json")):
        if stored_path.parent == run_dir:
            continue
        try:
            stored = json.loads(stored_path.read_text())
        except (OSError, ValueError):
            continue  # not a run directory this version wrote
        fields = config_differences(stored, wanted, ignore=BOOKKEEPING_FIELDS)  # bookkeeping makes no other run
        if not stored_path.parent.name.endswith(data_digest[:12]):
            fields.append("the data (another content digest)")
        found.append(f"{stored_path.parent}: {'; '.join(fields) or 'the same settings'}")
    return found


def phase_cache_dir(run_dir: Path) -> Path:
    """Where the runs of one dataset share their offline phase and collection prefixes."""
    return run_dir.parent / "_offline"


def d4rl_file(name) -> Path | None:
    """The real D4RL file of a dataset in $D4RL_DATASET_DIR, if it is there."""
    from opt_fast.data.names import resolve_dataset_path

    try:
        return resolve_dataset_path(name)
    except FileNotFoundError:
        return None


def generated_data_dir() -> Path:
    return Path(os.environ.get("OPT_FAST_DATA_DIR", Path.home() / ".opt_fast" / "datasets"))


def generated_path(name, env_version: str, budget: str) -> Path:
    return generated_data_dir() / f"generated-{env_version}-{budget}" / name.d4rl_filename


def load_training_data(config: Config, adroit_data: str | None = None, allow_env_mismatch: bool = False,
                       generate: bool = True):
    """The offline dataset: --dataset, else a Minari dataset (``minari:<id>``), else the D4RL file, else locally
    generated data (made if missing, unless ``generate`` is off: then FileNotFoundError; Adroit data from the DAPG
    release in ``adroit_data``).

    A --dataset whose file name or metadata says it holds another task family's data than --env's is refused
    unless ``allow_env_mismatch``: its scores would use the wrong references and its env the wrong dynamics."""
    from opt_fast.data.d4rl import load_dataset
    from opt_fast.data.names import ANTMAZE_FAMILY, DatasetName, MinariName

    task = config.task
    name = task.name
    if config.dataset is not None:
        dataset = load_dataset(Path(config.dataset))
        if not allow_env_mismatch and dataset.family is not None and dataset.family != name.family:
            holds = (dataset.name.d4rl_id if dataset.name is not None
                     else f"{dataset.family} ({dataset.metadata['env_id']})")
            raise ValueError(f"--dataset {config.dataset} holds {holds} data, but --env {config.env} is a "
                             f"{name.family} task; pass --allow-env-mismatch to train on it anyway")
        return dataset
    if task.data_source == "minari":
        from opt_fast.data.minari import load_minari

        assert isinstance(name, MinariName)
        return load_minari(name.dataset_id)
    assert isinstance(name, DatasetName)
    real = d4rl_file(name)
    if real is not None:
        return load_dataset(real)
    data_budget = DATA_BUDGET[config.budget]
    generated = generated_path(name, config.env_version, data_budget)
    if not generated.exists():
        if not generate:
            raise FileNotFoundError(f"no data for {name.d4rl_id} on disk yet (it is generated into {generated})")
        if name.family == ANTMAZE_FAMILY:
            raise FileNotFoundError(
                f"no data for {name.d4rl_id}: not in $D4RL_DATASET_DIR nor at {generated}. Make it first with "
                f"`opt-fast data generate {name.d4rl_id} --budget {data_budget}` (it trains a goal-reaching ant: "
                f"hours on a CPU), or use Minari's copy: --env minari:D4RL/antmaze/{name.kind}-v1")
        print(f"notice: no D4RL file for {name.d4rl_id} in $D4RL_DATASET_DIR; generating it locally with D4RL's "
              f"recipe (budget {data_budget}) into {generated.parent}. Scores on it are labelled 'generated', "
              f"not D4RL.", file=sys.stderr)
        generate_data(name, generated.parent, 0, data_budget, config.env_version, adroit_data)
    return load_dataset(generated)
