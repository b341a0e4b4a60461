"""Prioritized replay buffer backed by the native sum-tree in ``opt_fast._replay``.

The buffer holds the offline dataset (priority 1) and the online transitions (inserted at the
maximum priority) of OPT's balanced replay (docs/method.md §3.3); sampling is proportional to
priority, stratified over ``batch_size`` equal segments of the total mass as in Off2On.

Input conversion: transition fields may be any real-valued array-like (float64 observations
from gymnasium are common); they are converted to float32, the storage dtype. ``done`` may be
bool or 0/1 numbers. Indices must be integer arrays (converted to int64), priorities real
arrays (converted to float64). Complex, object and string inputs raise ``TypeError``; wrong
shapes raise ``ValueError``; indices outside ``[0, size)`` raise ``IndexError``; negative or
non-finite priorities, ``batch_size <= 0``, sampling an empty buffer and adding to a full
buffer without ``ring`` raise ``ValueError``.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from opt_fast import _replay

# Keys of `state_dict`; the row arrays hold `size` rows.
_ROW_KEYS = ("obs", "action", "reward", "next_obs", "done", "priority")
_STATE_KEYS = ("capacity", "obs_dim", "act_dim", "ring", "next_index", "max_priority", "rng_state")


def _as_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as a Python int >= ``minimum``; bools are rejected."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


# Accepted numpy dtype kinds (b bool, i/u integer, f float) and how an error message names them.
_KIND_NAMES = {"iu": "an integer", "iuf": "a real-valued", "biuf": "a bool or real-valued"}


def _as_array(name: str, value: Any, dtype: type[np.generic], kinds: str) -> np.ndarray:
    """Convert ``value`` to a C-contiguous ``dtype`` array if its dtype kind is in ``kinds``."""
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise TypeError(f"{name} must be {_KIND_NAMES[kinds]} array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def _rows(name: str, value: Any) -> np.ndarray:
    """Transition field -> float32 (bool is allowed only for ``done``)."""
    return _as_array(name, value, np.float32, "biuf" if name == "done" else "iuf")


def _indices(value: Any) -> np.ndarray:
    return _as_array("indices", value, np.int64, "iu")


def _priorities(value: Any) -> np.ndarray:
    return _as_array("priorities", value, np.float64, "iuf")


class ReplayBuffer:
    """Fixed-capacity transition store with proportional prioritized sampling.

    Args:
        capacity: maximum number of rows (>= 1); memory is reserved for all of them up front
            but only committed by the OS as rows are written.
        obs_dim: observation size (>= 1).
        act_dim: action size (>= 1).
        seed: seed of the buffer's own ``std::mt19937_64`` (0 <= seed < 2**64).
        ring: when False, adding beyond ``capacity`` raises ``ValueError``; when True, writes
            wrap around and overwrite the oldest rows (as the released OPT code does at 1M).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0, ring: bool = False):
        seed = _as_int("seed", seed, 0)
        if seed >= 2**64:
            raise ValueError(f"seed must be < 2**64, got {seed}")
        if not isinstance(ring, (bool, np.bool_)):
            raise TypeError(f"ring must be a bool, got {type(ring).__name__}")
        self._native = _replay.ReplayBuffer(
            _as_int("capacity", capacity, 1),
            _as_int("obs_dim", obs_dim, 1),
            _as_int("act_dim", act_dim, 1),
            seed,
            bool(ring),
        )
        # Whole-capacity views into the native storage; the public properties slice to size.
        self._obs = self._native.obs
        self._action = self._native.action
        self._reward = self._native.reward
        self._next_obs = self._native.next_obs
        self._done = self._native.done

    @property
    def size(self) -> int:
        """Number of stored rows (at most ``capacity``)."""
        return self._native.size

    @property
    def capacity(self) -> int:
        return self._native.capacity

    @property
    def obs_dim(self) -> int:
        return self._native.obs_dim

    @property
    def act_dim(self) -> int:
        return self._native.act_dim

    @property
    def ring(self) -> bool:
        return self._native.ring

    @property
    def max_priority(self) -> float:
        """Largest priority ever set (starts at 1.0); new rows are inserted at this priority."""
        return self._native.max_priority

    @property
    def total_priority(self) -> float:
        """Sum of the priorities of all stored rows (the sum-tree root)."""
        return self._native.total_priority

    @property
    def observations(self) -> np.ndarray:
        """``[size, obs_dim]`` float32 view of the storage (no copy; writes go to the buffer)."""
        return self._obs[: self.size]

    @property
    def actions(self) -> np.ndarray:
        """``[size, act_dim]`` float32 view of the storage."""
        return self._action[: self.size]

    @property
    def rewards(self) -> np.ndarray:
        """``[size]`` float32 view of the storage."""
        return self._reward[: self.size]

    @property
    def next_observations(self) -> np.ndarray:
        """``[size, obs_dim]`` float32 view of the storage."""
        return self._next_obs[: self.size]

    @property
    def dones(self) -> np.ndarray:
        """``[size]`` float32 view of the storage (0 or 1)."""
        return self._done[: self.size]

    def add(
        self, obs: npt.ArrayLike, action: npt.ArrayLike, reward: float, next_obs: npt.ArrayLike, done: bool
    ) -> int:
        """Append one transition at the current max priority; returns its row."""
        return self._native.add(
            _rows("obs", obs), _rows("action", action), float(reward), _rows("next_obs", next_obs), float(done)
        )

    def add_batch(
        self,
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: npt.ArrayLike,
        next_obs: npt.ArrayLike,
        done: npt.ArrayLike,
        priority: float | None = None,
    ) -> np.ndarray:
        """Append ``n`` transitions, all at ``priority`` (None: the current max priority).

        Same result as ``n`` calls of :meth:`add`; returns the int64 rows written. Nothing is
        written when any argument is invalid.
        """
        return self._native.add_batch(
            _rows("obs", obs),
            _rows("action", action),
            _rows("reward", reward),
            _rows("next_obs", next_obs),
            _rows("done", done),
            None if priority is None else float(priority),
        )

    def sample_uniform(self, batch_size: int) -> np.ndarray:
        """``batch_size`` int64 rows drawn uniformly with replacement."""
        return self._native.sample_uniform(_as_int("batch_size", batch_size, 1))

    def sample_prioritized(self, batch_size: int) -> np.ndarray:
        """``batch_size`` int64 rows drawn proportionally to priority.

        The total mass is split into ``batch_size`` equal segments with one uniform draw in
        each, so the rows come out in storage order of their cumulative mass.
        """
        return self._native.sample_prioritized(_as_int("batch_size", batch_size, 1))

    def update_priorities(self, indices: npt.ArrayLike, priorities: npt.ArrayLike) -> None:
        """Set the priorities of ``indices`` (the last value wins for repeated indices)."""
        self._native.update_priorities(_indices(indices), _priorities(priorities))

    def get_priorities(self, indices: npt.ArrayLike) -> np.ndarray:
        """float64 priorities of ``indices``."""
        return self._native.get_priorities(_indices(indices))

    def gather(self, indices: npt.ArrayLike) -> dict[str, np.ndarray]:
        """New contiguous arrays ``obs, action, reward, next_obs, done`` for ``indices``.

        The copy runs in C++ without the GIL.
        """
        obs, action, reward, next_obs, done = self._native.gather(_indices(indices))
        return {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": done}

    def state_dict(self) -> dict[str, Any]:
        """Snapshot (copies) of the rows, priorities, counters and RNG state.

        Contains only numpy arrays, ints, floats, bools and a str, so ``torch.save`` and pickle
        can store it.
        """
        size = self.size
        return {
            "capacity": self.capacity,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "ring": self.ring,
            "next_index": self._native.next_index,
            "max_priority": self.max_priority,
            "rng_state": self._native.rng_state(),
            "obs": self._obs[:size].copy(),
            "action": self._action[:size].copy(),
            "reward": self._reward[:size].copy(),
            "next_obs": self._next_obs[:size].copy(),
            "done": self._done[:size].copy(),
            "priority": self._native.priorities(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` bit-exactly: same rows, tree and future samples.

        The buffer must have the same capacity, dimensions and ring mode. Raises ``KeyError``
        for a missing key and ``ValueError`` for a mismatched or inconsistent state, in which
        case the buffer is left unchanged.
        """
        missing = [key for key in _STATE_KEYS + _ROW_KEYS if key not in state]
        if missing:
            raise KeyError(f"replay buffer state is missing keys {missing}")
        for key in ("capacity", "obs_dim", "act_dim", "ring"):
            mine = getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"replay buffer state has {key}={state[key]!r} but this buffer has {key}={mine!r}")
        if not isinstance(state["rng_state"], str):
            raise TypeError(f"replay buffer state rng_state must be a str, got {type(state['rng_state']).__name__}")
        obs, action, reward, next_obs, done = (_rows(key, state[key]) for key in _ROW_KEYS[:-1])
        self._native.load_state(
            _as_int("next_index", state["next_index"], 0),
            float(state["max_priority"]),
            obs, action, reward, next_obs, done,
            _as_array("priority", state["priority"], np.float64, "iuf"),
            state["rng_state"],
        )
