"""D4RL-layout hdf5 files: loading, d4rl's ``qlearning_dataset`` transitions, and a summary for ``data info``.

A file holds rows ``(s_i, a_i, r_i, done_i)`` with episodes laid end to end.
Real D4RL downloads and files written by :mod:`opt_fast.datagen` share this layout; generated files carry
``metadata/generator`` and may name the D4RL dataset they reproduce in ``metadata/dataset``
(e.g. ``hopper-medium-v2``) and the env they were made in in ``metadata/env_id`` (``Hopper-v5``).

Every dataset is labelled by what is known of it (:func:`data_source`): ``generated`` (opt-fast's files),
``d4rl`` (a file under D4RL's own name with the rows of D4RL's file, :data:`opt_fast.data.names.D4RL_ROWS`), or
``user file <name>``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opt_fast.data.names import (
    ADROIT_FAMILIES,
    ANTMAZE_FAMILY,
    D4RL_ROWS,
    MUJOCO_FAMILIES,
    DatasetName,
    name_from_filename,
    parse_dataset_name,
    resolve_dataset_path,
)
from opt_fast.data.scores import normalized_score

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
OPTIONAL_KEYS = ("timeouts", "next_observations")
_FLAG_KEYS = ("terminals", "timeouts")
_ROW_VECTOR_KEYS = ("rewards", "terminals", "timeouts")  # one value per row, stored (N,) or (N, 1)
_DEFAULT_MAX_EPISODE_STEPS = 1000  # D4RL registers every MuJoCo env with max_episode_steps=1000

PathLike = str | os.PathLike[str]


@contextmanager
def _open_hdf5(path: Path) -> Iterator[h5py.File]:
    """``h5py.File(path)`` for reading; a file that is not HDF5 or is cut short (h5py's OSError, which does not name
    the file) raises ``ValueError`` naming it."""
    try:
        with h5py.File(path, "r") as file:
            yield file
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err}); expected a D4RL-layout .hdf5 file") from None


def load_hdf5(path: PathLike) -> dict[str, np.ndarray]:
    """Read the D4RL keys of ``path``: float32 arrays, bool ``terminals``/``timeouts``, ``(N, 1)`` rewards and
    flags squeezed to ``(N,)``. Other keys (``infos/*``, ``metadata/*``) are not read; see :func:`read_metadata`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and key for a missing key,
    a wrong shape, a length mismatch or a NaN/inf value (with its first row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    raw: dict[str, np.ndarray] = {}
    with _open_hdf5(path) as file:
        for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
            node = file.get(key)
            if node is None:
                if key in REQUIRED_KEYS:
                    raise ValueError(f"{path}: missing key '{key}'; a D4RL file holds {', '.join(REQUIRED_KEYS)}")
                continue
            if not isinstance(node, h5py.Dataset):
                raise ValueError(f"{path}: '{key}' is a group, expected an array")
            raw[key] = _read_array(path, key, node)
    _check_layout(raw, str(path))
    return raw


def _read_array(path: Path, key: str, node: h5py.Dataset) -> np.ndarray:
    # Old D4RL files store float64 and (N, 1) rewards; cast while reading so a float64 copy never exists.
    array = node[()] if key in _FLAG_KEYS else node.astype(np.float32)[()]
    if array.ndim == 0:
        raise ValueError(f"{path}: key '{key}' is a scalar, expected one entry per row")
    if key in _ROW_VECTOR_KEYS and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    _check_finite(array, f"{path}: key '{key}'")
    return array.astype(bool) if key in _FLAG_KEYS else array


def _check_finite(array: np.ndarray, what: str) -> None:
    if array.dtype == bool or array.size == 0:
        return
    # A float64 sum of float32 values cannot overflow and is NaN/inf exactly when an element is, so the full
    # per-element mask (as large as the array) is only built to name the bad row.
    if np.isfinite(array.sum(dtype=np.float64)):
        return
    bad_rows = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
    raise ValueError(f"{what} has NaN or inf values, first at row {int(bad_rows[0])} ({len(bad_rows)} rows)")


def _check_layout(raw: Mapping[str, np.ndarray], where: str) -> None:
    """Required keys present, per-row keys 1-D, array keys 2-D, all as long as ``observations``."""
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise ValueError(f"{where}: missing key '{key}'; expected {', '.join(REQUIRED_KEYS)}")
    n = len(raw["observations"])
    for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
        if key not in raw:
            continue
        shape = np.shape(raw[key])
        ndim = 1 if key in _ROW_VECTOR_KEYS else 2
        if len(shape) != ndim:
            expected = "(N,)" if ndim == 1 else "(N, dim)"
            raise ValueError(f"{where}: key '{key}' has shape {shape}, expected {expected}")
        if shape[0] != n:
            raise ValueError(f"{where}: key '{key}' has {shape[0]} rows, expected {n} (the rows of 'observations')")
    if "next_observations" in raw and np.shape(raw["next_observations"]) != np.shape(raw["observations"]):
        raise ValueError(f"{where}: 'next_observations' and 'observations' differ in shape")


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The ``metadata`` group of ``path`` as a flat dict: its attributes, and its datasets keyed by their path
    inside the group (``algorithm``, ``policy/fc0/weight``). Strings are decoded, scalars become Python numbers,
    arrays stay numpy arrays. A file without the group gives ``{}``."""
    path = Path(path)
    with _open_hdf5(path) as file:
        group = file.get("metadata")
        if group is None:
            return {}
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{path}: 'metadata' is an array, expected a group")
        metadata = {name: _plain(value) for name, value in group.attrs.items()}

        def visit(name: str, node: h5py.HLObject) -> None:
            if isinstance(node, h5py.Dataset):
                metadata[name] = _plain(node[()])

        group.visititems(visit)
    return metadata


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


def _step_limit_rows(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """Rows d4rl's ``qlearning_dataset`` treats as an episode's last step when the file has no ``timeouts``.

    d4rl counts ``episode_step`` per row and calls row i final when the count is ``max_episode_steps - 1``. After
    a final row the count restarts at 0, but after a terminal row that is not final it restarts at 1 (d4rl resets
    to 0 and then increments as for any kept row). So between terminals the count is ``(offset + k) % T`` for the
    k-th row, with offset 0 for the first stretch and after a final terminal row, else 1. The loop below runs
    once per terminal (episode), the rest is vectorised.
    """
    n, horizon = len(terminals), max_episode_steps
    ends = np.flatnonzero(terminals)
    starts = np.concatenate(([0], ends + 1))
    offsets = [0]
    for length in (ends + 1 - starts[:-1]).tolist():
        offsets.append(0 if (offsets[-1] + length) % horizon == 0 else 1)
    stretch = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    step = (np.asarray(offsets)[stretch] + np.arange(n) - starts[stretch]) % horizon
    return step == horizon - 1


def _kept_rows(raw: Mapping[str, np.ndarray], terminate_on_end: bool, max_episode_steps: int) -> np.ndarray:
    """Indices i in 0..N-2 that ``qlearning_dataset`` turns into transitions."""
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    n_rows = max(len(raw["observations"]) - 1, 0)  # the last row has no next observation
    if terminate_on_end:
        return np.arange(n_rows)
    if "timeouts" in raw:
        final = np.asarray(raw["timeouts"], dtype=bool)[:n_rows]
    else:
        final = _step_limit_rows(np.asarray(raw["terminals"], dtype=bool)[:n_rows], max_episode_steps)
    return np.flatnonzero(~final)


def qlearning_dataset(
    raw: Mapping[str, np.ndarray],
    terminate_on_end: bool = False,
    max_episode_steps: int = _DEFAULT_MAX_EPISODE_STEPS,
) -> dict[str, np.ndarray]:
    """Transitions exactly as ``d4rl.qlearning_dataset(env, dataset=raw, terminate_on_end)`` builds them.

    For each row i in 0..N-2: ``next_observations`` is ``observations[i + 1]`` (never the stored
    ``next_observations``); a row that ends an episode by time limit (``timeouts[i]``, or without that key
    d4rl's step count reaching ``max_episode_steps``, its ``env._max_episode_steps``) is dropped unless
    ``terminate_on_end``; every other row is kept with ``terminals[i]``. With ``terminate_on_end`` d4rl keeps
    those rows too, with their stored terminal flag (its docstring says done=True, its code does not). The
    last row is always dropped.

    Returns d4rl's keys and dtypes: ``observations``, ``actions``, ``next_observations``, ``rewards`` as
    float32 and ``terminals`` as bool. Unlike d4rl, an empty result keeps its ``(0, dim)`` shapes.
    """
    _check_layout(raw, "qlearning_dataset input")
    rows = _kept_rows(raw, terminate_on_end, max_episode_steps)
    observations = np.asarray(raw["observations"], dtype=np.float32)
    return {
        "observations": observations[rows],
        "actions": np.asarray(raw["actions"], dtype=np.float32)[rows],
        "next_observations": observations[rows + 1],
        "rewards": np.asarray(raw["rewards"], dtype=np.float32)[rows],
        "terminals": np.asarray(raw["terminals"], dtype=bool)[rows],
    }


@dataclass(frozen=True, eq=False)
class OfflineDataset:
    """Transitions of one dataset file (``qlearning_dataset`` output) and where they came from."""

    observations: np.ndarray
    """float32 [N, obs_dim]"""
    actions: np.ndarray
    """float32 [N, act_dim]"""
    next_observations: np.ndarray
    """float32 [N, obs_dim]"""
    rewards: np.ndarray
    """float32 [N]"""
    terminals: np.ndarray
    """bool [N], true where the episode ended by termination (time limits are never terminals)"""
    path: Path
    source: str
    """What the rows are (:func:`data_source`): "generated", "d4rl", "minari" or "user file <name>"."""
    name: DatasetName | None
    """The D4RL dataset, from the name asked for, the D4RL file name or ``metadata/dataset``; None if unknown."""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        """Task family (hopper, antmaze, door...): the dataset's, else that of the env the file records it was made
        in (``metadata/env_id``); None when neither is known."""
        if self.name is not None:
            return self.name.family
        return family_of_env_id(self.metadata.get("env_id"))

    @cached_property
    def content_digest(self) -> str:
        """sha256 of the arrays a run trains on (shapes and dtypes included), computed once: what keys the offline
        cache and the run directories, so that other data under the same name or path is never taken for this."""
        digest = hashlib.sha256()
        for array in (self.observations, self.actions, self.next_observations, self.rewards, self.terminals):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return len(self.rewards)


def _locate(
    name_or_path: str | DatasetName | os.PathLike[str], dataset_path: PathLike | None
) -> tuple[Path, DatasetName | None]:
    """(file, dataset name if one was given): a name resolves through :func:`resolve_dataset_path`; a path object,
    or a string ending in .hdf5/.h5 or naming an existing file or directory, is a path (only without
    ``dataset_path``)."""
    if isinstance(name_or_path, DatasetName):
        return resolve_dataset_path(name_or_path, dataset_path), name_or_path
    candidate = Path(name_or_path)
    if dataset_path is None and candidate.is_dir():
        raise ValueError(f"{candidate} is a directory; expected a D4RL-layout .hdf5 file")
    if dataset_path is None and (not isinstance(name_or_path, str) or candidate.suffix in (".hdf5", ".h5")
                                 or candidate.is_file()):
        if not candidate.is_file():
            raise FileNotFoundError(f"no dataset file at {candidate}")
        return candidate, None
    name = parse_dataset_name(os.fspath(name_or_path))
    return resolve_dataset_path(name, dataset_path), name


def family_of_env_id(env_id: Any) -> str | None:
    """The task family of a gymnasium env id (``Hopper-v5``, ``AdroitHandDoor-v1``, ``AntMaze_UMaze-v4``), None for
    any other value."""
    if not isinstance(env_id, str):
        return None
    base = env_id.split("-")[0].lower().removeprefix("adroithand")
    if base.startswith(ANTMAZE_FAMILY):
        return ANTMAZE_FAMILY
    return base if base in (*MUJOCO_FAMILIES, *ADROIT_FAMILIES) else None


def data_source(path: Path, metadata: Mapping[str, Any], rows: int) -> str:
    """What a file's rows are: ``generated`` (opt-fast wrote it: ``metadata/generator``), ``d4rl`` (D4RL's own
    file name and as many rows as D4RL's file has), else ``user file <name>``: only D4RL's data is put beside the
    paper's numbers."""
    if "generator" in metadata:
        return "generated"
    own = name_from_filename(path)
    if own is not None and own.d4rl_id in D4RL_ROWS:
        fewest, most = D4RL_ROWS[own.d4rl_id]
        if fewest <= rows <= most:
            return "d4rl"
    return f"user file {path.name}"


def _identify(
    path: Path, metadata: Mapping[str, Any], asked: DatasetName | None, rows: int
) -> tuple[str, DatasetName | None]:
    """(source, dataset name) of a file of ``rows`` rows. The name is the one asked for, else the file's own: its
    D4RL file name or a parseable ``metadata/dataset``. Asking for another family than the file's own raises
    ``ValueError`` (its scores and env would be wrong)."""
    source = data_source(path, metadata, rows)
    own = name_from_filename(path)
    if own is None and isinstance(metadata.get("dataset"), str):
        try:
            own = parse_dataset_name(metadata["dataset"])
        except ValueError:
            own = None  # a free-form label, not a D4RL id
    if asked is not None and own is not None and asked.family != own.family:
        raise ValueError(f"{path} holds {own.d4rl_id} data, not {asked.family} data as {asked.d4rl_id} needs")
    return source, asked or own


def load_dataset(
    name_or_path: str | DatasetName | os.PathLike[str],
    dataset_path: PathLike | None = None,
    max_episode_steps: int = _DEFAULT_MAX_EPISODE_STEPS,
) -> OfflineDataset:
    """Load a dataset by name (``hopper-medium-replay``, from ``dataset_path`` or ``$D4RL_DATASET_DIR``) or by
    file path, as d4rl ``qlearning_dataset`` transitions; ``max_episode_steps`` only matters for files without
    ``timeouts``."""
    path, asked = _locate(name_or_path, dataset_path)
    raw = load_hdf5(path)
    metadata = read_metadata(path)
    source, name = _identify(path, metadata, asked, len(raw["observations"]))
    transitions = qlearning_dataset(raw, max_episode_steps=max_episode_steps)
    if len(transitions["rewards"]) == 0:
        raise ValueError(
            f"{path}: no transitions to train on (rows: {len(raw['observations'])}): a transition needs a next row, "
            f"and rows that end an episode by time limit ('timeouts') are dropped as d4rl's qlearning_dataset does")
    return OfflineDataset(**transitions, path=path, source=source, name=name, metadata=metadata)


def check_env_compatible(dataset: OfflineDataset, obs_dim: int, act_dim: int) -> None:
    """Raise ``ValueError`` when the dataset's observation or action size differs from the env's."""
    if (dataset.obs_dim, dataset.act_dim) != (obs_dim, act_dim):
        label = dataset.name.d4rl_id if dataset.name is not None else dataset.path.name
        raise ValueError(
            f"dataset {label} ({dataset.path}) has observations of size {dataset.obs_dim} and actions of size "
            f"{dataset.act_dim}, but the environment has {obs_dim} and {act_dim}; "
            f"the dataset was made for a different environment (or env version)"
        )


def _episode_bounds(raw: Mapping[str, np.ndarray], max_episode_steps: int) -> np.ndarray:
    """Start row of every episode: rows follow a terminal or time-limit row (d4rl's step count without timeouts)."""
    terminals = np.asarray(raw["terminals"], dtype=bool)
    if "timeouts" in raw:
        ends = terminals | np.asarray(raw["timeouts"], dtype=bool)
    else:
        ends = terminals | _step_limit_rows(terminals, max_episode_steps)
    starts = np.concatenate(([0], np.flatnonzero(ends) + 1))
    return starts[starts < len(terminals)]


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _describe(value: Any) -> Any:
    """Metadata value for display: small arrays as lists, large ones (policy weights) by shape and dtype."""
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 8 else f"array{value.shape} {value.dtype}"
    return value


def dataset_info(
    name_or_path: str | DatasetName | os.PathLike[str],
    dataset_path: PathLike | None = None,
    max_episode_steps: int = _DEFAULT_MAX_EPISODE_STEPS,
) -> dict[str, Any]:
    """Summary of a dataset (found as :func:`load_dataset` finds it) for ``opt-fast data info``: plain Python
    values (JSON-serialisable).

    Keys: path, source, dataset (D4RL id or None), rows, transitions (``qlearning_dataset`` rows), episodes,
    terminals, timeouts (None without the key), obs_dim, act_dim, episode_length and episode_return
    ({mean, std, min, max}, a trailing unfinished episode included), normalized_return (same, None when the
    dataset is unknown), metadata.
    """
    path, asked = _locate(name_or_path, dataset_path)
    raw = load_hdf5(path)
    metadata = read_metadata(path)
    n = len(raw["observations"])
    source, name = _identify(path, metadata, asked, n)
    starts = _episode_bounds(raw, max_episode_steps)
    has_rows = len(starts) > 0
    returns = np.add.reduceat(raw["rewards"].astype(np.float64), starts) if has_rows else np.zeros(0)
    lengths = np.diff(np.append(starts, n))
    return {
        "path": str(path),
        "source": source,
        "dataset": None if name is None else name.d4rl_id,
        "rows": n,
        "transitions": len(_kept_rows(raw, False, max_episode_steps)),
        "episodes": len(starts),
        "terminals": int(raw["terminals"].sum()),
        "timeouts": int(raw["timeouts"].sum()) if "timeouts" in raw else None,
        "obs_dim": int(raw["observations"].shape[1]),
        "act_dim": int(raw["actions"].shape[1]),
        "episode_length": _stats(lengths.astype(np.float64)) if has_rows else None,
        "episode_return": _stats(returns) if has_rows else None,
        "normalized_return": _stats(normalized_score(name, returns)) if has_rows and name is not None else None,
        "metadata": {key: _describe(value) for key, value in metadata.items()},
    }


def write_d4rl_hdf5(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` and ``metadata/<key>`` datasets to a temporary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as file:
            for key, value in arrays.items():
                file.create_dataset(key, data=value)
            for key, value in meta.items():
                file.create_dataset(f"metadata/{key}", data=value)
        os.chmod(tmp, 0o644)  # mkstemp creates the file private; a dataset is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flatten_observation(obs: dict[str, np.ndarray]) -> np.ndarray:
    """D4RL's AntMaze observation from a goal-env Dict observation: x, y (``achieved_goal``) then the 27
    ``observation`` entries (batched arrays work too: the last axis is concatenated)."""
    missing = [key for key in ("achieved_goal", "observation") if key not in obs]
    if missing:
        raise ValueError(f"a Dict observation needs keys 'achieved_goal' and 'observation' to be flattened as "
                         f"D4RL's AntMaze observation; missing {missing} (keys: {sorted(obs)})")
    return np.concatenate([obs["achieved_goal"], obs["observation"]], axis=-1)
