"""Test-wide setup.

- Without a GPU, Triton kernels run in its interpreter, which must be chosen before ``kernels`` is imported.
- One intra-op thread: the tests' networks are tiny, and two threads on a loaded 2-core machine made them ~10x
  slower.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)
