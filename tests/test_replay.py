"""The native prioritized replay buffer held against a pure-Python/numpy model of the same structure.

The model is: a flat priority array (the leaves), the 8-ary left-to-right sums that give the exact
root total, a reference std::mt19937_64 and the documented draw recipes, so sampled indices can be
predicted exactly, not only statistically.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from opt_fast.replay import ReplayBuffer

OBS_DIM, ACT_DIM = 3, 2
MASK64 = (1 << 64) - 1


class MT19937_64:
    """std::mt19937_64 as the C++ standard defines it ([rand.predef]), in plain Python."""

    def __init__(self, seed: int):
        self.state = [seed & MASK64]
        for i in range(1, 312):
            prev = self.state[-1]
            self.state.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64)
        self.index = 312

    def __call__(self) -> int:
        if self.index == 312:
            for i in range(312):
                x = (self.state[i] & 0xFFFFFFFF80000000) | (self.state[(i + 1) % 312] & 0x7FFFFFFF)
                self.state[i] = self.state[(i + 156) % 312] ^ (x >> 1) ^ (0xB5026F5AA96619E9 if x & 1 else 0)
            self.index = 0
        y = self.state[self.index]
        self.index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        return y ^ (y >> 43)


def model_total(priorities: np.ndarray) -> float:
    """Root of an 8-ary tree whose nodes are the left-to-right sums of their children."""
    level = np.asarray(priorities, dtype=np.float64)
    while True:
        groups = np.pad(level, (0, -len(level) % 8)).reshape(-1, 8)
        sums = groups[:, 0].copy()
        for k in range(1, 8):
            sums += groups[:, k]
        if len(sums) == 1:
            return float(sums[0])
        level = sums


def model_prioritized(rng: MT19937_64, priorities: np.ndarray, batch_size: int) -> np.ndarray:
    """Stratified draws: one uniform point in each of batch_size equal segments of the mass."""
    segment = model_total(priorities) / batch_size
    masses = np.array([(j + (rng() >> 11) * 2.0**-53) * segment for j in range(batch_size)])
    rows = np.searchsorted(np.cumsum(priorities), masses, side="right")
    return np.minimum(rows, np.flatnonzero(priorities > 0)[-1])  # a mass rounded up to the total


def model_uniform(rng: MT19937_64, size: int, batch_size: int) -> np.ndarray:
    """Unbiased bounded draws: reject values below 2**64 mod size, then take the remainder."""
    threshold = (1 << 64) % size
    rows = []
    for _ in range(batch_size):
        draw = rng()
        while draw < threshold:
            draw = rng()
        rows.append(draw % size)
    return np.array(rows)


def random_rows(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "done": (rng.random(n) < 0.1).astype(np.float32),
    }


def filled(capacity: int, n: int, seed: int = 0, ring: bool = False) -> tuple[ReplayBuffer, dict[str, np.ndarray]]:
    buf = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, seed=seed, ring=ring)
    rows = random_rows(np.random.default_rng(seed + 100), n)
    buf.add_batch(**rows, priority=1.0)
    return buf, rows


def test_mt19937_64_model_matches_the_standard() -> None:
    # The standard requires the 10000th output of a default-seeded (5489) mt19937_64 to be this.
    rng = MT19937_64(5489)
    for _ in range(9999):
        rng()
    assert rng() == 9981545732273789042


def test_samples_match_the_model_exactly() -> None:
    data = np.random.default_rng(1)
    buf, _ = filled(1000, 700, seed=7)
    priorities = data.uniform(0.01, 3.0, size=700)
    priorities[data.choice(700, 50, replace=False)] = 0.0  # rows that must never be drawn
    buf.update_priorities(np.arange(700), priorities)
    model = MT19937_64(7)
    for batch_size in (1, 5, 256, 64):
        np.testing.assert_array_equal(buf.sample_prioritized(batch_size), model_prioritized(model, priorities, batch_size))
        np.testing.assert_array_equal(buf.sample_uniform(batch_size), model_uniform(model, 700, batch_size))


def test_sampling_frequencies_follow_priorities() -> None:
    buf, _ = filled(10, 10, seed=3)
    priorities = np.array([0.5, 1.0, 2.0, 0.0, 3.0, 4.0, 1.0, 5.0, 0.25, 8.0])
    buf.update_priorities(np.arange(10), priorities)
    counts = np.bincount(np.concatenate([buf.sample_prioritized(32) for _ in range(400)]), minlength=10)
    assert counts[3] == 0
    positive = priorities > 0
    expected = counts.sum() * priorities[positive] / priorities.sum()
    chi2 = float(((counts[positive] - expected) ** 2 / expected).sum())
    assert chi2 < 26.12  # chi-square, 8 degrees of freedom, p = 0.001
    uniform = np.bincount(np.concatenate([buf.sample_uniform(32) for _ in range(400)]), minlength=10)
    assert float(((uniform - 1280) ** 2 / 1280).sum()) < 27.88  # 9 degrees of freedom, p = 0.001


def test_each_segment_gets_exactly_one_sample() -> None:
    data = np.random.default_rng(2)
    buf, _ = filled(1000, 1000, seed=4)
    priorities = data.uniform(0.0, 1.0, size=1000) ** 4  # skewed, with near-zero rows
    priorities[17] = 300.0  # one row heavier than several segments
    buf.update_priorities(np.arange(1000), priorities)
    upper = np.cumsum(priorities)
    lower = upper - priorities
    batch_size = 64
    segment = upper[-1] / batch_size
    tol = 1e-9 * upper[-1]
    for _ in range(20):
        rows = buf.sample_prioritized(batch_size)
        j = np.arange(batch_size)
        # Row interval [lower, upper) must meet segment [j * segment, (j + 1) * segment).
        assert np.all(lower[rows] <= (j + 1) * segment + tol)
        assert np.all(upper[rows] >= j * segment - tol)
        assert np.all(np.diff(rows) >= 0)
        assert (rows == 17).sum() >= int(300.0 / segment) - 1


@pytest.mark.parametrize("capacity", [1, 8, 9, 64, 65, 1000])
def test_totals_and_priorities_match_the_model(capacity: int) -> None:
    data = np.random.default_rng(capacity)
    buf = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, seed=0)
    model: list[float] = []
    first = max(1, capacity // 2)
    buf.add_batch(**random_rows(data, first), priority=0.75)
    model += [0.75] * first
    assert buf.max_priority == 1.0
    largest = 1.0  # the max priority is the largest ever set, not the largest held
    for _ in range(3):
        rows = data.integers(0, len(model), size=2 * len(model))  # repeated rows: the last value wins
        values = data.uniform(0.0, 4.0, size=len(rows))
        buf.update_priorities(rows, values)
        for row, value in zip(rows, values):
            model[row] = value
        largest = max(largest, values.max())
        assert buf.total_priority == model_total(np.array(model))
    assert buf.max_priority == largest
    if len(model) < capacity:
        row = random_rows(data, 1)
        assert buf.add(row["obs"][0], row["action"][0], 0.5, row["next_obs"][0], False) == len(model)
        model.append(buf.max_priority)
    np.testing.assert_array_equal(buf.get_priorities(np.arange(buf.size)), model)
    assert buf.total_priority == model_total(np.array(model))


def test_max_priority_is_the_largest_ever_set() -> None:
    buf, _ = filled(10, 4)
    buf.update_priorities([0], [5.0])
    buf.update_priorities([0], [0.1])
    assert buf.max_priority == 5.0
    rows = random_rows(np.random.default_rng(0), 2)
    assert buf.get_priorities(buf.add_batch(**rows)).tolist() == [5.0, 5.0]
    buf.add_batch(**rows, priority=7.0)
    assert buf.max_priority == 7.0
    assert buf.total_priority == pytest.approx(0.1 + 3 + 10 + 14)


def test_views_share_memory_with_the_native_storage() -> None:
    buf, rows = filled(3, 3, ring=True)
    views = (buf.observations, buf.actions, buf.rewards, buf.next_observations, buf.dones)
    for view, key in zip(views, ("obs", "action", "reward", "next_obs", "done")):
        assert view.dtype == np.float32 and not view.flags.owndata
        np.testing.assert_array_equal(view, rows[key])
    obs = np.full(OBS_DIM, 9.0)
    assert buf.add(obs, np.zeros(ACT_DIM), 1.0, obs, True) == 0  # C++ overwrites row 0 ...
    np.testing.assert_array_equal(views[0][0], obs)  # ... and the old view sees it
    assert views[4][0] == 1.0
    buf.rewards[1] = 42.0  # a numpy write is what C++ gathers
    assert buf.gather([1])["reward"][0] == 42.0
    assert np.shares_memory(buf.observations, views[0])


def test_float64_inputs_are_converted_to_float32() -> None:
    buf = ReplayBuffer(2, OBS_DIM, ACT_DIM)
    buf.add([0.1, 0.2, 0.3], np.array([1, -1]), 0.1, np.full(OBS_DIM, 1e-50), 1)
    np.testing.assert_array_equal(buf.observations[0], np.float32([0.1, 0.2, 0.3]))
    assert buf.next_observations[0, 0] == 0.0 and buf.rewards[0] == np.float32(0.1)
    buf.add_batch(np.zeros((1, OBS_DIM)), np.zeros((1, ACT_DIM)), [2], np.zeros((1, OBS_DIM)), [True])
    assert buf.dones.tolist() == [1.0, 1.0]


def test_gather_matches_fancy_indexing() -> None:
    buf, _ = filled(100, 60)
    indices = np.random.default_rng(5).integers(0, 60, size=300)
    batch = buf.gather(indices)
    expected = {
        "obs": buf.observations[indices],
        "action": buf.actions[indices],
        "reward": buf.rewards[indices],
        "next_obs": buf.next_observations[indices],
        "done": buf.dones[indices],
    }
    assert batch.keys() == expected.keys()
    for key, value in batch.items():
        assert value.dtype == np.float32 and value.flags.c_contiguous and value.flags.owndata
        np.testing.assert_array_equal(value, expected[key])
    empty = buf.gather(np.array([], dtype=np.int64))
    assert empty["obs"].shape == (0, OBS_DIM) and empty["done"].shape == (0,)


def test_ring_wraps_around_and_overwrites_the_oldest_rows() -> None:
    data = np.random.default_rng(6)
    buf = ReplayBuffer(4, OBS_DIM, ACT_DIM, ring=True)
    first, second = random_rows(data, 3), random_rows(data, 3)
    assert buf.add_batch(**first, priority=2.0).tolist() == [0, 1, 2]
    assert buf.add_batch(**second, priority=3.0).tolist() == [3, 0, 1]
    assert buf.size == 4
    np.testing.assert_array_equal(buf.observations, np.concatenate([second["obs"][1:], first["obs"][2:], second["obs"][:1]]))
    np.testing.assert_array_equal(buf.get_priorities(np.arange(4)), [3.0, 3.0, 2.0, 3.0])
    assert buf.total_priority == 11.0
    # A batch larger than the capacity keeps its last `capacity` rows, placed as successive adds.
    big = random_rows(data, 10)
    rows = buf.add_batch(**big, priority=0.5)
    assert rows.tolist() == [2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    np.testing.assert_array_equal(buf.rewards[rows[6:]], big["reward"][6:])
    assert buf.total_priority == 2.0 and buf.size == 4
    obs = np.ones(OBS_DIM)
    assert buf.add(obs, np.ones(ACT_DIM), 0.0, obs, False) == 0


def test_full_buffer_without_ring_raises_and_keeps_its_state() -> None:
    buf, rows = filled(4, 2)
    with pytest.raises(ValueError, match="full.*ring=True"):
        buf.add_batch(**random_rows(np.random.default_rng(0), 3))
    assert buf.size == 2 and buf.total_priority == 2.0
    buf.add_batch(**random_rows(np.random.default_rng(0), 2))
    with pytest.raises(ValueError, match="full"):
        buf.add(rows["obs"][0], rows["action"][0], 0.0, rows["next_obs"][0], False)
    assert buf.size == 4


def test_invalid_update_changes_nothing() -> None:
    buf, _ = filled(10, 10)
    with pytest.raises(IndexError, match="index 10 at position 1"):
        buf.update_priorities([0, 10], [5.0, 5.0])
    with pytest.raises(ValueError, match="priority must be finite"):
        buf.update_priorities([0, 1], [5.0, np.nan])
    assert buf.get_priorities([0]).tolist() == [1.0] and buf.max_priority == 1.0


def roundtrip(state: dict[str, Any], weights_only: bool) -> dict[str, Any]:
    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    return torch.load(stream, weights_only=weights_only)


@pytest.mark.parametrize("as_tensors", [False, True])
def test_state_dict_round_trip_gives_identical_future_samples(as_tensors: bool) -> None:
    data = np.random.default_rng(8)
    buf, _ = filled(50, 70, seed=11, ring=True)  # wrapped: next_index != size
    buf.update_priorities(np.arange(50), data.uniform(0.1, 3.0, size=50))
    buf.sample_prioritized(16)
    state = buf.state_dict()
    if as_tensors:  # numpy arrays converted to tensors load with torch.load(weights_only=True)
        state = {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value for key, value in state.items()}
    restored = ReplayBuffer(50, OBS_DIM, ACT_DIM, seed=999, ring=True)
    restored.load_state_dict(roundtrip(state, weights_only=as_tensors))
    buf.rewards[0] = 123.0  # the state is a snapshot, not a view
    assert restored.rewards[0] != 123.0
    buf.rewards[0] = restored.rewards[0]
    assert restored.total_priority == buf.total_priority and restored.max_priority == buf.max_priority
    for _ in range(3):
        rows = buf.sample_prioritized(32)
        np.testing.assert_array_equal(restored.sample_prioritized(32), rows)
        np.testing.assert_array_equal(restored.sample_uniform(8), buf.sample_uniform(8))
        values = data.uniform(0.1, 5.0, size=32)
        buf.update_priorities(rows, values)
        restored.update_priorities(rows, values)
        assert restored.total_priority == buf.total_priority
    row = random_rows(data, 1)
    assert restored.add_batch(**row).tolist() == buf.add_batch(**row).tolist() == [20]
    for key, value in buf.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)


def test_load_state_dict_over_a_fuller_buffer_clears_its_extra_rows() -> None:
    small, _ = filled(20, 5, seed=1)
    big, _ = filled(20, 15, seed=2)
    big.load_state_dict(small.state_dict())
    assert big.size == 5 and big.total_priority == 5.0
    assert not big._native.obs[5:].any() and not big._native.reward[5:].any()


def native_state(buf: ReplayBuffer, **changes: Any) -> dict[str, Any]:
    return {**buf.state_dict(), **changes}


def bad_cases() -> list[tuple[str, Callable[[ReplayBuffer], object], type[Exception], str]]:
    obs, act = np.zeros(OBS_DIM), np.zeros(ACT_DIM)
    n5 = random_rows(np.random.default_rng(0), 5)

    def batch(**changes: Any) -> dict[str, Any]:
        return {**n5, **changes}

    def native(b: ReplayBuffer) -> Any:
        return b._native  # the binding itself, below the wrapper's numpy conversions

    return [
        ("capacity 0", lambda b: ReplayBuffer(0, 3, 2), ValueError, "capacity must be >= 1"),
        ("obs_dim 0", lambda b: ReplayBuffer(10, 0, 2), ValueError, "obs_dim must be >= 1"),
        ("act_dim < 0", lambda b: ReplayBuffer(10, 3, -1), ValueError, "act_dim must be >= 1"),
        ("float capacity", lambda b: ReplayBuffer(10.5, 3, 2), TypeError, "capacity must be an integer"),
        ("negative seed", lambda b: ReplayBuffer(10, 3, 2, seed=-1), ValueError, "seed must be >= 0"),
        ("huge seed", lambda b: ReplayBuffer(10, 3, 2, seed=2**64), ValueError, "seed must be < 2"),
        ("ring not bool", lambda b: ReplayBuffer(10, 3, 2, ring="yes"), TypeError, "ring must be a bool"),
        ("obs shape", lambda b: b.add(np.zeros(4), act, 0.0, obs, False), ValueError, r"obs must have shape \(3,\)"),
        ("action shape", lambda b: b.add(obs, np.zeros((1, 2)), 0.0, obs, False), ValueError, r"action must have shape \(2,\)"),
        ("string obs", lambda b: b.add(np.array(["a", "b", "c"]), act, 0.0, obs, False), TypeError, "obs must be a real-valued array"),
        ("complex obs", lambda b: b.add(obs, act, 0.0, obs + 1j, False), TypeError, "next_obs must be a real"),
        ("done 0.5", lambda b: b.add(obs, act, 0.0, obs, 0.5), ValueError, "done must be 0 or 1"),
        ("batch rows differ", lambda b: b.add_batch(**batch(action=np.zeros((4, 2)))), ValueError, r"action must have shape \(5, 2\)"),
        ("reward 2-D", lambda b: b.add_batch(**batch(reward=np.zeros((5, 1)))), ValueError, r"reward must have shape \(5,\)"),
        ("done 2", lambda b: b.add_batch(**batch(done=np.full(5, 2.0))), ValueError, "done must be 0 or 1"),
        ("priority < 0", lambda b: b.add_batch(**n5, priority=-1.0), ValueError, "priority must be finite and >= 0"),
        ("priority nan", lambda b: b.add_batch(**n5, priority=float("nan")), ValueError, "priority must be finite"),
        ("priority inf", lambda b: b.add_batch(**n5, priority=float("inf")), ValueError, "priority must be finite"),
        ("uniform batch 0", lambda b: b.sample_uniform(0), ValueError, "batch_size must be >= 1"),
        ("prioritized batch < 0", lambda b: b.sample_prioritized(-3), ValueError, "batch_size must be >= 1"),
        ("float batch", lambda b: b.sample_prioritized(2.5), TypeError, "batch_size must be an integer"),
        ("sample empty", lambda b: ReplayBuffer(5, 3, 2).sample_prioritized(4), ValueError, "empty"),
        ("uniform empty", lambda b: ReplayBuffer(5, 3, 2).sample_uniform(4), ValueError, "empty"),
        ("index == size", lambda b: b.update_priorities([10], [1.0]), IndexError, "index 10 at position 0"),
        ("negative index", lambda b: b.get_priorities([3, -1]), IndexError, "index -1 at position 1"),
        ("gather index", lambda b: b.gather([0, 11]), IndexError, "out of range"),
        ("float indices", lambda b: b.gather(np.array([0.0])), TypeError, "indices must be an integer array"),
        ("2-D indices", lambda b: b.get_priorities(np.zeros((2, 2), dtype=int)), ValueError, r"indices must have shape \(n,\)"),
        ("length mismatch", lambda b: b.update_priorities([0, 1], [1.0]), ValueError, r"priorities must have shape \(2,\)"),
        ("negative update", lambda b: b.update_priorities([0], [-0.5]), ValueError, "priority must be finite and >= 0"),
        ("inf update", lambda b: b.update_priorities([0], [np.inf]), ValueError, "priority must be finite"),
        ("missing key", lambda b: b.load_state_dict({"obs": 0}), KeyError, "missing keys"),
        ("capacity mismatch", lambda b: ReplayBuffer(11, 3, 2).load_state_dict(b.state_dict()), ValueError, "capacity=10"),
        ("ring mismatch", lambda b: ReplayBuffer(10, 3, 2, ring=True).load_state_dict(b.state_dict()), ValueError, "ring=False"),
        ("bad rng", lambda b: b.load_state_dict(native_state(b, rng_state="1 2 3")), ValueError, "rng_state"),
        ("bad next_index", lambda b: b.load_state_dict(native_state(b, next_index=3)), ValueError, "next_index 3"),
        ("low max", lambda b: b.load_state_dict(native_state(b, max_priority=0.5)), ValueError, "max_priority must be"),
        ("priority > max", lambda b: b.load_state_dict(native_state(b, priority=np.full(10, 2.0))), ValueError, "exceeds max_priority"),
        ("state rows", lambda b: b.load_state_dict(native_state(b, reward=np.zeros(9))), ValueError, r"reward must have shape \(10,\)"),
        ("native float64", lambda b: native(b).add_batch(**batch(obs=np.zeros((5, 3))), priority=None), TypeError,
         "obs must have dtype float32"),
        ("native list", lambda b: native(b).update_priorities([0], np.ones(1)), TypeError, "indices must be a numpy array"),
        (
            "native strided",
            lambda b: native(b).add_batch(**batch(obs=np.zeros((5, 6), np.float32)[:, ::2]), priority=None),
            ValueError,
            "obs must be C-contiguous",
        ),
        ("native int32 indices", lambda b: native(b).gather(np.zeros(2, np.int32)), TypeError, "dtype int64"),
    ]


BAD_CASES = bad_cases()


@pytest.mark.parametrize(("case", "call", "error", "match"), BAD_CASES, ids=[case[0] for case in BAD_CASES])
def test_bad_arguments_raise(case: str, call: Callable[[ReplayBuffer], object], error: type[Exception], match: str) -> None:
    buf, _ = filled(10, 10)
    before = buf.state_dict()
    with pytest.raises(error, match=match):
        call(buf)
    after = buf.state_dict()  # a failed call leaves the buffer untouched
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=f"{case} changed {key}")



def test_all_zero_priorities_cannot_be_sampled_by_priority() -> None:
    buf, _ = filled(10, 10)
    buf.update_priorities(np.arange(10), np.zeros(10))
    with pytest.raises(ValueError, match="all priorities are 0"):
        buf.sample_prioritized(2)
    assert buf.sample_uniform(3).shape == (3,)
