"""D4RL normalised scores: ``100 * (R - REF_MIN) / (REF_MAX - REF_MIN)``, one reference pair per task family.

The pairs are D4RL's (Farama-Foundation/D4RL ``d4rl/infos.py`` ``REF_MIN_SCORE``/``REF_MAX_SCORE``): MuJoCo uses
the ``<family>-random-v0`` pair for every version (random policy / expert SAC), Adroit the ``<family>-human-v0``
pair for every version, AntMaze 0 and 1 (success rate). D4RL's ``get_normalized_score`` returns the fraction;
published tables and this module report it times 100.
"""
from __future__ import annotations

from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from opt_fast.data.names import ANTMAZE_FAMILY, DatasetName, parse_dataset_name

REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    ANTMAZE_FAMILY: (0.0, 1.0),
    "pen": (96.262799, 3076.8331017826877),
    "door": (-56.512833, 2880.5693087298737),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
}
"""Task family -> (REF_MIN, REF_MAX) raw episode returns."""


def reference_scores(family_or_name: str | DatasetName) -> tuple[float, float]:
    """(REF_MIN, REF_MAX) for a family (``hopper``) or any dataset name (``hopper-medium-v2``, ``antmaze-umaze``)."""
    if isinstance(family_or_name, str) and family_or_name.strip().lower() in REF_SCORES:
        return REF_SCORES[family_or_name.strip().lower()]
    return REF_SCORES[parse_dataset_name(family_or_name).family]


@overload
def normalized_score(family_or_name: str | DatasetName, raw_return: float) -> float: ...
@overload
def normalized_score(family_or_name: str | DatasetName, raw_return: NDArray[Any]) -> NDArray[np.float64]: ...
@overload
def normalized_score(family_or_name: str | DatasetName, raw_return: ArrayLike) -> float | NDArray[np.float64]: ...


def normalized_score(family_or_name: str | DatasetName, raw_return: ArrayLike) -> float | NDArray[np.float64]:
    """D4RL normalised score in percent of a raw return, or elementwise of an array of returns."""
    ref_min, ref_max = reference_scores(family_or_name)
    score = 100.0 * (np.asarray(raw_return, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(score) if score.ndim == 0 else score


ANTMAZE_REWARDS = ("minus_one", "cql", "calql", "none")
"""AntMaze training-reward conventions (``Config.antmaze_reward``, :func:`transform_reward`): the dataset's and the
online env's 0/1 success reward as ``r - 1`` (IQL/SPOT/OPT, the default), CQL's ``4 (r - 0.5)``, Cal-QL's
``10 r - 5``, or unchanged; evaluation always counts the raw success."""


def transform_reward(convention: str, reward: np.ndarray | float) -> np.ndarray | float:
    """The training reward of a 0/1 success reward under a convention of ``Config.antmaze_reward``."""
    if convention == "minus_one":
        return reward - 1.0
    if convention == "cql":
        return 4.0 * (reward - 0.5)
    if convention == "calql":
        return 10.0 * reward - 5.0
    if convention == "none":
        return reward
    raise ValueError(f"unknown AntMaze reward convention {convention!r}; valid: {', '.join(ANTMAZE_REWARDS)}")
