"""Fused GPU kernels (Triton) behind the torch reference implementations of ``opt_fast.networks``.

Importing this package imports triton; on a machine without CUDA the kernels run only under Triton's
interpreter (``TRITON_INTERPRET=1`` set before the first import).
"""
from kernels.ensemble_mlp import triton_ensemble_forward, triton_q_values

__all__ = ["triton_ensemble_forward", "triton_q_values"]
