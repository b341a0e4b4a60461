"""Minari datasets (Farama-Foundation/Minari) as opt-fast transitions, read offline through the ``minari`` package.

A dataset ``<namespace>/<env>/<name>-v<N>`` lives in ``$MINARI_DATASETS_PATH/<id>/data/`` (default root
``~/.minari/datasets``) as ``main_data.hdf5`` and ``metadata.json``. Nothing is
downloaded: a dataset that is not on disk raises an error saying where it was looked for.

Transitions: each episode stores T + 1 observations for T steps, so every step has its own next observation
(obs = observations[:-1], next_obs = observations[1:]) and every step is kept, time-limit cuts included; ``terminals``
are the episode's ``terminations`` only. Dict observations (AntMaze: ``achieved_goal``, ``observation``,
``desired_goal``) are flattened as D4RL's files hold them (:func:`opt_fast.data.d4rl.flatten_observation`).

Reference scores: the dataset's own ``ref_min_score``/``ref_max_score`` when its metadata has both (they were
measured on the dataset's env), else D4RL's table for the task family; the choice is printed and recorded in the
dataset's metadata (``ref_source``).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opt_fast.data.d4rl import OfflineDataset, flatten_observation
from opt_fast.data.names import MINARI_PREFIX, parse_minari_id
from opt_fast.data.scores import reference_scores


def datasets_root() -> Path:
    """``$MINARI_DATASETS_PATH``, or ``~/.minari/datasets`` as minari's own default."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets").expanduser()


def read_minari_metadata(dataset_id: str) -> dict[str, Any]:
    """``metadata.json`` of a local dataset, checked to come from a minari version the installed one reads."""
    import minari

    path = datasets_root() / dataset_id / "data" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"Minari dataset {dataset_id} is not on disk: no {path} (root: $MINARI_DATASETS_PATH, default "
            f"~/.minari/datasets). opt-fast reads Minari data offline only; download it elsewhere with "
            f"`minari download {dataset_id}` and copy the directory there")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    version = metadata.get("minari_version")
    if version is None:
        raise ValueError(f"{path}: missing key 'minari_version'; a Minari dataset's metadata names the minari "
                         f"version that wrote it")
    if version not in minari.supported_dataset_versions:
        raise ValueError(
            f"{path}: dataset written by minari {version}, which the installed minari {minari.__version__} cannot "
            f"read; supported dataset versions: {', '.join(sorted(minari.supported_dataset_versions))}")
    return metadata


def _flat(observations: Any, where: str) -> np.ndarray:
    if isinstance(observations, dict):

        try:
            return flatten_observation(observations)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return np.asarray(observations)


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
    if len(bad):
        raise ValueError(f"{what} has NaN or inf values, first at step {int(bad[0])} ({len(bad)} steps)")


def _episodes(dataset_id: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each episode of a local Minari dataset as checked (observations incl. the final one, actions, rewards,
    terminations) arrays; bad data raises ``ValueError`` naming the dataset, the episode and what was expected, an
    unreadable ``main_data.hdf5`` (cut short, not HDF5) one naming the file."""
    import minari

    data_file = datasets_root() / dataset_id / "data" / "main_data.hdf5"
    try:
        dataset = minari.load_dataset(dataset_id, download=False)
        episodes = list(dataset.iterate_episodes())
    except OSError as err:
        raise ValueError(f"{data_file}: not a readable HDF5 file ({err}); expected a Minari dataset's "
                         "main_data.hdf5") from None
    if not episodes:
        raise ValueError(f"Minari dataset {dataset_id} holds no episodes")
    first_dims: tuple[int, int] | None = None
    for episode in episodes:
        where = f"Minari dataset {dataset_id}, episode {episode.id}"
        observations = _flat(episode.observations, where).astype(np.float32)
        actions = np.asarray(episode.actions, dtype=np.float32)
        steps = len(episode.rewards)
        if actions.ndim != 2 or observations.ndim != 2:
            raise ValueError(f"{where}: observations {observations.shape} and actions {actions.shape} must be "
                             f"(steps + 1, obs) and (steps, act) arrays (Box or Dict spaces)")
        if len(observations) != steps + 1 or len(actions) != steps or len(episode.terminations) != steps:
            raise ValueError(f"{where}: {steps} rewards need {steps + 1} observations (the final one included), "
                             f"{steps} actions and {steps} terminations; got {len(observations)}, {len(actions)} "
                             f"and {len(episode.terminations)}")
        dims = (observations.shape[1], actions.shape[1])
        first_dims = first_dims or dims
        if dims != first_dims:
            raise ValueError(f"{where}: observation/action sizes {dims[0]}/{dims[1]} differ from the first episode's "
                             f"{first_dims[0]}/{first_dims[1]}")
        rewards = np.asarray(episode.rewards, dtype=np.float32)
        for key, array in (("observations", observations), ("actions", actions), ("rewards", rewards)):
            _check_finite(array, f"{where}: {key}")
        yield observations, actions, rewards, np.asarray(episode.terminations, dtype=bool)


def load_minari(dataset_id: str) -> OfflineDataset:
    """Every transition of a local Minari dataset (see the module docstring); bad data raises ``ValueError``
    naming the dataset, the episode and what was expected."""
    name = parse_minari_id(dataset_id)
    metadata = read_minari_metadata(name.dataset_id)
    columns: dict[str, list[np.ndarray]] = {key: [] for key in
                                            ("observations", "actions", "rewards", "next_observations", "terminals")}
    for observations, actions, rewards, terminations in _episodes(name.dataset_id):
        columns["observations"].append(observations[:-1])
        columns["next_observations"].append(observations[1:])
        columns["actions"].append(actions)
        columns["rewards"].append(rewards)
        columns["terminals"].append(terminations)
    arrays = {key: np.concatenate(parts) for key, parts in columns.items()}

    if metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        ref_min, ref_max = float(metadata["ref_min_score"]), float(metadata["ref_max_score"])
        ref_source = "the dataset's Minari metadata"
    else:
        ref_min, ref_max = reference_scores(name.family)
        ref_source = f"D4RL's table for {name.family} (the Minari metadata has none)"
    print(f"{name.dataset_id}: reference scores from {ref_source}: min {ref_min:g}, max {ref_max:g}", file=sys.stderr)
    recorded = {"dataset_id": name.dataset_id, "minari_version": metadata["minari_version"],
                "ref_min_score": ref_min, "ref_max_score": ref_max, "ref_source": ref_source}
    return OfflineDataset(**arrays, path=datasets_root() / name.dataset_id, source="minari", name=None,
                          metadata=recorded)


def minari_info(dataset_id: str) -> dict[str, Any]:
    """Summary of a local Minari dataset for ``opt-fast data info minari:<id>``: plain Python values."""
    name = parse_minari_id(dataset_id)
    metadata = read_minari_metadata(name.dataset_id)
    lengths, returns, terminals = [], [], 0
    dims = (0, 0)
    for observations, actions, rewards, terminations in _episodes(name.dataset_id):
        lengths.append(len(rewards))
        returns.append(float(rewards.astype(np.float64).sum()))
        terminals += int(terminations.sum())
        dims = (observations.shape[1], actions.shape[1])

    def stats(values: Sequence[float]) -> dict[str, float]:
        array = np.asarray(values, dtype=np.float64)
        return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
                "max": float(array.max())}

    return {
        "path": str(datasets_root() / name.dataset_id),
        "source": "minari",
        "dataset": MINARI_PREFIX + name.dataset_id,
        "transitions": sum(lengths),
        "episodes": len(lengths),
        "terminals": terminals,
        "obs_dim": dims[0],
        "act_dim": dims[1],
        "episode_length": stats(lengths),
        "episode_return": stats(returns),
        "metadata": {key: value for key, value in metadata.items() if isinstance(value, (str, int, float, bool))},
    }
