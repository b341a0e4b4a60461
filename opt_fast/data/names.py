"""D4RL dataset names as users type them, and where D4RL's download cache keeps each file.

``walker2d-medium-replay``, ``hopper-random-v0``, ``door-cloned`` and ``antmaze-umaze-diverse-v2`` all parse to a
:class:`DatasetName`; a missing version takes the one the paper uses (v2 for MuJoCo and AntMaze, v1 for Adroit).

File names follow Farama-Foundation/D4RL: ``d4rl/offline_env.py`` caches a dataset as the last component of its
download URL (``filepath_from_url``) under ``$D4RL_DATASET_DIR`` (default ``~/.d4rl/datasets``), and the URLs are
those of ``d4rl/infos.py`` ``DATASET_URLS`` (also registered in ``d4rl/gym_mujoco/__init__.py``). The test
``tests/test_d4rl_crosscheck.py`` compares every file name below with that table when d4rl is installed.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

MUJOCO_FAMILIES = ("halfcheetah", "hopper", "walker2d", "ant")
ADROIT_FAMILIES = ("pen", "door", "hammer", "relocate")
ANTMAZE_FAMILY = "antmaze"

_MUJOCO_KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
_ADROIT_KINDS = ("human", "cloned", "expert")

# AntMaze v0 files (infos.py, ant_maze_new/); v2 re-released the same stems with "_fixed" appended (ant_maze_v2/).
_ANTMAZE_STEMS = {
    "umaze": "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse",
    "umaze-diverse": "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse",
    "medium-play": "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse",
    "medium-diverse": "Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse",
    "large-play": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse",
    "large-diverse": "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse",
}
_ADROIT_V0_FILES = {  # infos.py, hand_dapg/
    "human": "{family}-v0_demos_clipped.hdf5",
    "cloned": "{family}-demos-v0-bc-combined.hdf5",
    "expert": "{family}-v0_expert_clipped.hdf5",
}


def _d4rl_files() -> dict[str, str]:
    """Every supported D4RL id mapped to its file name in the download cache."""
    files: dict[str, str] = {}
    for family in MUJOCO_FAMILIES:
        for kind in _MUJOCO_KINDS:
            # v0 (gym_mujoco/): medium-replay was published as "<family>_mixed", with walker2d spelled "walker".
            if kind == "medium-replay":
                v0_stem = ("walker" if family == "walker2d" else family) + "_mixed"
            else:
                v0_stem = f"{family}_{kind.replace('-', '_')}"
            files[f"{family}-{kind}-v0"] = f"{v0_stem}.hdf5"
        for kind in (*_MUJOCO_KINDS, "full-replay"):
            # v1/v2 (gym_mujoco_v1/, gym_mujoco_v2/): the id with "_" between family and kind words.
            for version in ("v1", "v2"):
                files[f"{family}-{kind}-{version}"] = f"{family}_{kind.replace('-', '_')}-{version}.hdf5"
    for family in ADROIT_FAMILIES:
        for kind in _ADROIT_KINDS:
            files[f"{family}-{kind}-v0"] = _ADROIT_V0_FILES[kind].format(family=family)
            files[f"{family}-{kind}-v1"] = f"{family}-{kind}-v1.hdf5"  # hand_dapg_v1/: the id itself
    for kind, stem in _ANTMAZE_STEMS.items():
        files[f"{ANTMAZE_FAMILY}-{kind}-v0"] = f"{stem}.hdf5"
        files[f"{ANTMAZE_FAMILY}-{kind}-v2"] = f"{stem}_fixed.hdf5"
    return files


D4RL_FILES: dict[str, str] = _d4rl_files()
"""Supported D4RL ids (``hopper-medium-v2``) -> file names in ``$D4RL_DATASET_DIR``."""


def _d4rl_rows() -> dict[str, tuple[int, int]]:
    """D4RL id -> (fewest, most) rows its published file has: the sizes of D4RL's recipe
    and of the files as Minari's D4RL conversions list them. Random, medium and
    expert (MuJoCo v2) and AntMaze v2 are 1M steps; medium-replay is the SAC run's replay buffer up to medium;
    medium-expert is medium cut at its last episode end (under 1000 rows lost) plus expert; Adroit v1 human is 25
    replayed demonstrations and expert 5000 episodes of 200 steps. Ids not listed (v0/v1 MuJoCo files, full-replay,
    ant medium-replay, Adroit cloned and pen expert) have no checked size, so a file under their names is never
    taken for D4RL's."""
    rows: dict[str, tuple[int, int]] = {}
    for family in MUJOCO_FAMILIES:
        for kind in ("random", "medium", "expert"):
            rows[f"{family}-{kind}-v2"] = (1_000_000, 1_000_000)
        rows[f"{family}-medium-expert-v2"] = (1_999_001, 2_000_000)
    for family, replay in (("hopper", 402_000), ("halfcheetah", 202_000), ("walker2d", 302_000)):
        rows[f"{family}-medium-replay-v2"] = (replay, replay)
    for kind in _ANTMAZE_STEMS:
        rows[f"{ANTMAZE_FAMILY}-{kind}-v2"] = (1_000_000, 1_000_000)
    for family, demos in (("pen", 5_000), ("door", 6_729), ("hammer", 11_310), ("relocate", 9_942)):
        rows[f"{family}-human-v1"] = (demos, demos)
    for family in ("door", "hammer", "relocate"):
        rows[f"{family}-expert-v1"] = (1_000_000, 1_000_000)
    return rows


D4RL_ROWS: dict[str, tuple[int, int]] = _d4rl_rows()
"""D4RL ids -> the (fewest, most) rows of D4RL's own file: a file under a D4RL name is D4RL's data only with these."""

_ID_BY_FILE = {filename: d4rl_id for d4rl_id, filename in D4RL_FILES.items()}
_NAME_RE = re.compile(r"^(?P<family>[a-z0-9]+)-(?P<kind>[a-z-]+?)(?:-(?P<version>v\d+))?$")


def default_version(family: str) -> str:
    """The version a name without one gets: v1 for Adroit (its only re-release), v2 otherwise."""
    return "v1" if family in ADROIT_FAMILIES else "v2"


@dataclass(frozen=True)
class DatasetName:
    """A D4RL dataset: ``family`` (hopper, antmaze, door...), ``kind`` (medium-replay, umaze-diverse...),
    ``version`` (v0, v1, v2)."""

    family: str
    kind: str
    version: str

    def __post_init__(self) -> None:
        if self.d4rl_id not in D4RL_FILES:
            raise ValueError(_unknown_message(self.d4rl_id))

    @property
    def d4rl_id(self) -> str:
        """The id D4RL registers, e.g. ``walker2d-medium-replay-v2``."""
        return f"{self.family}-{self.kind}-{self.version}"

    @property
    def d4rl_filename(self) -> str:
        """D4RL's file name for this dataset, e.g. ``walker2d_medium_replay-v2.hdf5``."""
        return D4RL_FILES[self.d4rl_id]

    @property
    def label(self) -> str:
        """The name runs and tables show: the D4RL id."""
        return self.d4rl_id

    def __str__(self) -> str:
        return self.d4rl_id


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(D4RL_FILES), n=5)
    hint = f"closest known names: {', '.join(close)}" if close else "known are e.g. hopper-medium-v2, pen-human-v1"
    return f"unknown D4RL dataset {name!r}; {hint}"


def parse_dataset_name(name: str | DatasetName) -> DatasetName:
    """Parse ``family-kind[-vN]`` (case and surrounding blanks ignored); unknown names raise ``ValueError``
    listing the closest known ones."""
    if isinstance(name, DatasetName):
        return name
    text = name.strip().lower()
    match = _NAME_RE.match(text)
    if match is None:
        raise ValueError(_unknown_message(text))
    family, kind = match["family"], match["kind"]
    return DatasetName(family, kind, match["version"] or default_version(family))


def name_from_filename(filename: str | os.PathLike[str]) -> DatasetName | None:
    """The dataset whose D4RL file name is ``filename``'s last component, or None for any other file."""
    d4rl_id = _ID_BY_FILE.get(Path(filename).name)
    return None if d4rl_id is None else parse_dataset_name(d4rl_id)


def d4rl_dataset_dir() -> Path:
    """``$D4RL_DATASET_DIR``, or ``~/.d4rl/datasets`` as in d4rl's ``offline_env.py`` when it is unset or empty."""
    return Path(os.environ.get("D4RL_DATASET_DIR") or Path.home() / ".d4rl" / "datasets").expanduser()


def resolve_dataset_path(name: str | DatasetName, dataset_path: str | os.PathLike[str] | None = None) -> Path:
    """The hdf5 file for ``name``: ``dataset_path`` when given (a directory means its D4RL file name inside it),
    else ``$D4RL_DATASET_DIR/<d4rl_filename>``. Raises ``FileNotFoundError`` naming the path looked up."""
    parsed = parse_dataset_name(name)
    if dataset_path is None:
        path = d4rl_dataset_dir() / parsed.d4rl_filename
    else:
        path = Path(dataset_path).expanduser()
        if path.is_dir():
            path = path / parsed.d4rl_filename
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {parsed.d4rl_id}: no file at {path} (set D4RL_DATASET_DIR, pass a dataset path, "
            f"or generate the data)"
        )
    return path


MINARI_PREFIX = "minari:"
_MINARI_RE = re.compile(r"^(?P<namespace>[\w.-]+)/(?P<env>[\w.-]+)/(?P<dataset>[\w.-]+?)-v(?P<version>\d+)$")


@dataclass(frozen=True)
class MinariName:
    """A Minari dataset id (``D4RL/door/human-v2``, ``mujoco/hopper/medium-v0``) and the task family and dataset
    kind it maps to (``door``, ``human``): Minari ids name the env in their second component."""

    dataset_id: str
    family: str
    kind: str

    @property
    def label(self) -> str:
        """The name runs and tables show, without slashes: ``minari-D4RL-door-human-v2``."""
        return "minari-" + self.dataset_id.replace("/", "-")

    def __str__(self) -> str:
        return MINARI_PREFIX + self.dataset_id


def parse_minari_id(dataset_id: str) -> MinariName:
    """Parse ``<namespace>/<env>/<dataset>-v<N>``; the env must be one of the task families opt-fast runs."""
    text = dataset_id.strip()
    match = _MINARI_RE.match(text)
    if match is None:
        raise ValueError(f"Minari dataset id {text!r} is not of the form <namespace>/<env>/<dataset>-v<N> "
                         f"(e.g. D4RL/door/human-v2, D4RL/antmaze/umaze-v1, mujoco/hopper/medium-v0)")
    family = match["env"].lower()
    families = (*MUJOCO_FAMILIES, *ADROIT_FAMILIES, ANTMAZE_FAMILY)
    if family not in families:
        raise ValueError(f"Minari dataset {text!r}: env {match['env']!r} is not one opt-fast runs; supported envs: "
                         f"{', '.join(families)}")
    return MinariName(text, family, match["dataset"].lower())


def parse_task(env: str | DatasetName | MinariName) -> DatasetName | MinariName:
    """``--env``: a D4RL dataset name (see :func:`parse_dataset_name`) or ``minari:<Minari dataset id>``."""
    if isinstance(env, (DatasetName, MinariName)):
        return env
    text = env.strip()
    if text.lower().startswith(MINARI_PREFIX):
        return parse_minari_id(text[len(MINARI_PREFIX):])
    return parse_dataset_name(text)
