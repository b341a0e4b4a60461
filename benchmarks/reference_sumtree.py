"""Straightforward numpy sum-tree, the baseline the native replay buffer is measured against.

It follows the steps of the segment tree in OPT's released code (Off2On's prioritized buffer,
adapted from Kaixhin/Rainbow): one numpy array holds the binary tree; a batch lookup loops over
the tree depth, vectorised over the batch, gathering both children of every node and choosing
one; an update writes the leaves, then walks up one level at a time, recomputing each distinct
parent (``np.unique``) from its two children; a stratified sample is redrawn if it hits a
zero-priority leaf. Unlike the released code (float32) it keeps float64 priorities, like the
native buffer, so the two do the same arithmetic.
"""

from __future__ import annotations

import numpy as np

# Row offsets of the left and right child in a [2, n] gather.
_CHILD = np.array([[0], [1]])


class NumpySumTree:
    """Binary sum-tree over ``capacity`` priorities: root at 1, children of ``i`` at ``2i, 2i + 1``."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.depth = (capacity - 1).bit_length()
        self.leaves = 1 << self.depth
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def fill(self, priorities: np.ndarray) -> None:
        """Set the first ``len(priorities)`` leaves and rebuild the whole tree bottom-up."""
        self.tree[self.leaves : self.leaves + len(priorities)] = priorities
        for level in range(self.depth - 1, -1, -1):
            first = 1 << level
            children = self.tree[2 * first : 4 * first]
            self.tree[first : 2 * first] = children[0::2] + children[1::2]

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaf priorities, then recompute their ancestors one level at a time."""
        nodes = np.asarray(indices) + self.leaves
        self.tree[nodes] = priorities
        for _ in range(self.depth):
            nodes = np.unique(nodes // 2)
            self.tree[nodes] = self.tree[2 * nodes + _CHILD].sum(axis=0)

    def find(self, masses: np.ndarray) -> np.ndarray:
        """Leaf index whose prefix-mass interval holds each mass (descends one level per step)."""
        nodes = np.ones(len(masses), dtype=np.int64)
        batch = np.arange(len(masses))
        for _ in range(self.depth):
            children = 2 * nodes + _CHILD
            left = self.tree[children[0]]
            right = (masses > left).astype(np.int64)  # a mass equal to the left sum goes left
            nodes = children[right, batch]
            masses = masses - right * left
        return nodes - self.leaves

    def sample_stratified(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """One proportional draw in each of ``batch_size`` equal segments of the total mass."""
        segment = self.total / batch_size
        while True:
            rows = self.find((np.arange(batch_size) + rng.random(batch_size)) * segment)
            if np.all(self.tree[rows + self.leaves] > 0):
                return rows
