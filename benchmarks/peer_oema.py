"""The peer side of the fine-tuning benchmark: OPT's step as the OEMA design lays it out, written here from that
design's description (never its code). OEMA (guosyjlu/OEMA) and Off2OnRL, which OPT's released code builds on:

- separate critic modules, each with its own Adam, batches gathered from numpy arrays and priorities handed back
  through numpy (as in ``reference_opt.ReferenceAgent`` and its loop, whose code it reuses);
- a prioritized replay whose sum-tree is a numpy array walked one item at a time in Python: ``update`` writes a
  leaf and propagates the change up to the root, ``find`` descends from the root for each sampled mass;

So it differs from the straightforward reference only in its replay: the reference's tree is vectorised over the
batch (``reference_sumtree.NumpySumTree``), the peer's goes item by item.
"""

from __future__ import annotations

import numpy as np
from reference_opt import NumpyReplay, ReferenceFinetuner
from reference_sumtree import NumpySumTree


class ItemSumTree(NumpySumTree):
    """``NumpySumTree``'s tree (same layout, the same one-off ``fill``) updated and searched one item at a time."""

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """For each item: set its leaf, then add the change to every ancestor."""
        for index, priority in zip(indices.tolist(), np.asarray(priorities, dtype=np.float64).tolist(), strict=True):
            node = index + self.leaves
            change = priority - self.tree[node]
            while node >= 1:
                self.tree[node] += change
                node //= 2

    def find(self, masses: np.ndarray) -> np.ndarray:
        """For each mass: descend from the root to the leaf whose prefix-mass interval holds it."""
        rows = np.empty(len(masses), dtype=np.int64)
        for i, mass in enumerate(masses.tolist()):
            node = 1
            while node < self.leaves:
                left = self.tree[2 * node]
                if mass > left:  # a mass equal to the left sum goes left
                    mass -= left
                    node = 2 * node + 1
                else:
                    node = 2 * node
            rows[i] = node - self.leaves
        return rows


class OEMAPeerFinetuner(ReferenceFinetuner):
    """The reference fine-tuning loop with the balanced replay's tree walked item by item."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        balanced: NumpyReplay = self.balanced
        tree = ItemSumTree(balanced.capacity)
        tree.tree[:] = balanced.tree.tree  # same leaves, same sums: the loaded dataset at priority 1
        balanced.tree = tree
