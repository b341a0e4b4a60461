"""D4RL normalised scores against hand-computed values from the reference table (d4rl/infos.py)."""
from __future__ import annotations

import numpy as np
import pytest

from opt_fast.data import DatasetName, normalized_score, reference_scores

# (family, REF_MIN, REF_MAX) as written in D4RL (d4rl/infos.py).
TABLE = [
    ("hopper", -20.272305, 3234.3),
    ("halfcheetah", -280.178953, 12135.0),
    ("walker2d", 1.629008, 4592.3),
    ("ant", -325.6, 3879.7),
    ("antmaze", 0.0, 1.0),
    ("pen", 96.262799, 3076.8331017826877),
    ("door", -56.512833, 2880.5693087298737),
    ("hammer", -274.856578, 12794.134825156867),
    ("relocate", -6.425911, 4233.877797728884),
]


@pytest.mark.parametrize(("family", "ref_min", "ref_max"), TABLE)
def test_reference_points_map_to_0_50_100(family: str, ref_min: float, ref_max: float) -> None:
    assert normalized_score(family, ref_min) == pytest.approx(0.0, abs=1e-12)
    assert normalized_score(family, ref_max) == pytest.approx(100.0)
    assert normalized_score(family, (ref_min + ref_max) / 2) == pytest.approx(50.0)


def test_hand_computed_values() -> None:
    assert normalized_score("hopper", 3234.3) == pytest.approx(100.0)
    assert normalized_score("hopper", -20.272305) == pytest.approx(0.0, abs=1e-12)
    # 100 * (1647.136 + 20.272305) / (3234.3 + 20.272305) = 100 * 1667.408305 / 3254.572305 = 51.23279...
    assert normalized_score("hopper", 1647.136) == pytest.approx(51.23279, abs=1e-5)
    # walker2d: 100 * (0 - 1.629008) / 4590.670992 = -0.035485...
    assert normalized_score("walker2d", 0.0) == pytest.approx(-0.0354851, abs=1e-6)
    assert normalized_score("antmaze", 0.75) == pytest.approx(75.0)


def test_names_resolve_to_their_family() -> None:
    assert normalized_score("hopper-medium-replay", 3234.3) == pytest.approx(100.0)
    assert normalized_score("hopper-random-v0", 3234.3) == pytest.approx(100.0)
    assert normalized_score(" Hopper ", 3234.3) == pytest.approx(100.0)
    assert normalized_score("antmaze-umaze-diverse-v2", 0.5) == pytest.approx(50.0)
    assert normalized_score(DatasetName("door", "cloned", "v1"), -56.512833) == pytest.approx(0.0, abs=1e-12)
    assert reference_scores("pen-expert") == (96.262799, 3076.8331017826877)


def test_arrays_and_scalar_types() -> None:
    scores = normalized_score("antmaze", np.array([[0.0, 0.25], [1.0, 0.5]]))
    assert isinstance(scores, np.ndarray) and scores.shape == (2, 2)
    np.testing.assert_allclose(scores, [[0.0, 25.0], [100.0, 50.0]])
    np.testing.assert_allclose(normalized_score("hopper", [-20.272305, 3234.3]), [0.0, 100.0], atol=1e-12)
    assert type(normalized_score("hopper", 1000)) is float
    assert type(normalized_score("hopper", np.float32(1000))) is float


def test_unknown_family_raises_with_suggestion() -> None:
    with pytest.raises(ValueError, match="closest known names: walker2d-medium-v2"):
        normalized_score("walker-medium", 1.0)
    with pytest.raises(ValueError, match="unknown D4RL dataset"):
        normalized_score("cartpole", 1.0)
