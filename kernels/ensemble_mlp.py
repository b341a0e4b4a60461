"""A fused Triton forward and backward of an E-member MLP ensemble ``in -> H1 -> H2 -> out`` (ReLU, biases).

The networks of opt-fast (``opt_fast/networks.py``) keep an ensemble as batched weights: per layer a weight
``[E, in, out]`` and a bias ``[E, 1, out]``. This module evaluates the two-hidden-layer case without LayerNorm
(every critic and the density-ratio net of the paper: 256-256) in one kernel launch forward and two backward:

* forward, grid (B tiles, E): one program holds a tile of ``BLOCK_B`` rows of one member. The first layer
  reads the input as two parts, ``x1`` (obs) against weight rows ``[:K1]`` and ``x2`` (action) against rows
  ``[K1:]``, so the critic's ``cat([obs, action])`` is never materialised. The hidden activation ``h1`` stays
  in registers; the second layer is streamed in ``BLOCK_N`` column chunks, each chunk is ReLU'd and multiplied
  into the output straight away, so ``h2`` only goes to memory when a backward pass needs it.
* backward, grid (B tiles, E): from ``dout`` and the saved ``h1``, ``h2`` one program forms the
  pre-activation gradients ``dz2``, ``dz1`` of its rows (and ``d obs``, ``d action`` when they are needed:
  the actor's gradient flows through ``Q(s, pi(s))`` into the action).
* weight gradients, grid (weight tiles of all layers, E): each program reduces one 64 x 64 tile of
  ``x^T dz`` over the whole batch in a fixed order (no atomics: results are deterministic), and the bias
  gradient ``sum_B dz`` with it. One launch covers every layer, since at B = 256 launches, not FLOPs, cost.

Tile sizes are chosen for the paper's widths (256): a program holds all H1 columns of its rows, so much wider
first hidden layers cost registers and shared memory in proportion (correct, but not tuned for).

Inputs may be shared by all members (``[B, in]``, read with a zero member stride, never copied) or per member
(``[E, B, in]``, seeds batched). All tensors are float32.

Precision: every product is accumulated in float32 (``tl.dot`` with an fp32 accumulator). With ``tf32=False``
(the default) the products are IEEE fp32 (``input_precision="ieee"``), the same arithmetic as torch's fp32
``baddbmm`` up to summation order (|error| ~ 1e-6 relative); ``tf32=True`` lets H100 tensor cores round the
inputs to tf32 (10-bit mantissa, ~1e-3 relative), as torch does under ``allow_tf32``.

The launches are wrapped as two torch custom ops (``opt_fast::ensemble_mlp_forward`` / ``_backward``, with
shape functions and an autograd formula), so ``torch.compile`` sees each as one opaque node, without a graph break.

The kernels run on CUDA. Elsewhere they only run under Triton's interpreter (numpy, slow), which is selected
when the ``@triton.jit`` decorators execute: set ``TRITON_INTERPRET=1`` *before* this module is first imported.

Higher-order gradients (OPT's meta-adaptation differentiates through an inner SGD step, docs/method.md §3.2): when a
backward pass runs with ``create_graph=True`` the gradients are recomputed with torch ops so that they carry
a graph; an ordinary backward uses the Triton kernels.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl

# One layer's parameters as opt_fast.networks.LayerParams lays them out: weight [E, in, out], bias [E, 1, out],
# LayerNorm weight and bias (must be None here). Spelled out, not imported: networks imports kernels.
LayerParams = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]

# Whether the @triton.jit functions below were built for the interpreter (decided at import time).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

# Tile sizes. tl.dot needs every dimension >= 16; the hidden width is held whole (padded to a power of two).
_BLOCK_K = 32  # input features per step of the first layer and of d obs / d action
# H2 columns per chunk of the second layer. A chunk of W2 is H1 x 32 floats (32 KB at H1 = 256); Triton
# pipelines such loads in up to 3 shared-memory stages, so 64 would come close to an H100's 227 KB.
_BLOCK_N = 32
_BLOCK_W = 64  # rows and columns of a weight-gradient tile, and batch rows per step of its reduction
_MIN_DOT = 16


def _pow2(n: int) -> int:
    """The tile width that covers n: the next power of two, at least tl.dot's minimum of 16."""
    return max(_MIN_DOT, triton.next_power_of_2(n))


@triton.jit
def _input_times_weight(
    acc, x_ptr, stride_xb, stride_xk, w_ptr, K, H, rows, row_ok, cols, col_ok,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc += x[rows, :K] @ w[:K, cols], where w is row-major with H columns."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + rows[:, None] * stride_xb + ks[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + ks[:, None] * H + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _grad_times_weight_t(
    dz, w_ptr, K, H, dx_ptr, stride_db, stride_dk, rows, row_ok, cols, col_ok,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """dx[rows, :K] = dz @ w[:K, cols]^T, where w is row-major with H columns."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        w_t = tl.load(w_ptr + ks[None, :] * H + cols[:, None], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        dx = tl.dot(dz, w_t, input_precision=PRECISION)
        tl.store(dx_ptr + rows[:, None] * stride_db + ks[None, :] * stride_dk, dx,
                 mask=row_ok[:, None] & k_ok[None, :])


@triton.jit
def _forward_kernel(
    x1_ptr, x2_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, h1_ptr, h2_ptr,
    B, K1, K2, H1, H2, OUT,
    stride_x1e, stride_x1b, stride_x1k, stride_x2e, stride_x2b, stride_x2k,
    SAVE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, H1_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, OUT_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    """out = relu(relu([x1, x2] W1 + b1) W2 + b2) W3 + b3 for BLOCK_B rows of one member; h1, h2 saved if SAVE."""
    e = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    c1 = tl.arange(0, H1_PAD)
    c1_ok = c1 < H1
    outs = tl.arange(0, OUT_PAD)
    out_ok = outs < OUT
    w1_e = w1_ptr + e * (K1 + K2) * H1

    # Layer 1: both input parts accumulate into one tile; padded rows and columns stay finite and are masked.
    z1 = tl.zeros((BLOCK_B, H1_PAD), dtype=tl.float32)
    z1 = _input_times_weight(z1, x1_ptr + e * stride_x1e, stride_x1b, stride_x1k, w1_e, K1, H1,
                             rows, row_ok, c1, c1_ok, BLOCK_K, PRECISION)
    z1 = _input_times_weight(z1, x2_ptr + e * stride_x2e, stride_x2b, stride_x2k, w1_e + K1 * H1, K2, H1,
                             rows, row_ok, c1, c1_ok, BLOCK_K, PRECISION)
    b1 = tl.load(b1_ptr + e * H1 + c1, mask=c1_ok, other=0.0)
    h1 = tl.maximum(z1 + b1[None, :], 0.0)
    if SAVE:
        tl.store(h1_ptr + (e * B + rows[:, None]) * H1 + c1[None, :], h1, mask=row_ok[:, None] & c1_ok[None, :])

    # Layers 2 and 3, one chunk of H2 at a time: each ReLU'd chunk goes straight into the output.
    acc = tl.zeros((BLOCK_B, OUT_PAD), dtype=tl.float32)
    for n0 in range(0, H2, BLOCK_N):
        cn = n0 + tl.arange(0, BLOCK_N)
        cn_ok = cn < H2
        w2 = tl.load(w2_ptr + e * H1 * H2 + c1[:, None] * H2 + cn[None, :],
                     mask=c1_ok[:, None] & cn_ok[None, :], other=0.0)
        b2 = tl.load(b2_ptr + e * H2 + cn, mask=cn_ok, other=0.0)
        h2 = tl.maximum(tl.dot(h1, w2, input_precision=PRECISION) + b2[None, :], 0.0)
        if SAVE:
            tl.store(h2_ptr + (e * B + rows[:, None]) * H2 + cn[None, :], h2, mask=row_ok[:, None] & cn_ok[None, :])
        w3 = tl.load(w3_ptr + e * H2 * OUT + cn[:, None] * OUT + outs[None, :],
                     mask=cn_ok[:, None] & out_ok[None, :], other=0.0)
        acc = tl.dot(h2, w3, acc, input_precision=PRECISION)
    b3 = tl.load(b3_ptr + e * OUT + outs, mask=out_ok, other=0.0)
    tl.store(out_ptr + (e * B + rows[:, None]) * OUT + outs[None, :], acc + b3[None, :],
             mask=row_ok[:, None] & out_ok[None, :])


@triton.jit
def _backward_kernel(
    dout_ptr, h1_ptr, h2_ptr, w1_ptr, w2_ptr, w3_ptr, dz1_ptr, dz2_ptr, dx1_ptr, dx2_ptr,
    B, K1, K2, H1, H2, OUT,
    stride_dx1e, stride_dx1b, stride_dx1k, stride_dx2e, stride_dx2b, stride_dx2k,
    INPUT_GRAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, H1_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, OUT_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    """dz2 = (dout W3^T) * [h2 > 0], dz1 = (dz2 W2^T) * [h1 > 0] and, if INPUT_GRAD, d[x1, x2] = dz1 W1^T."""
    e = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    c1 = tl.arange(0, H1_PAD)
    c1_ok = c1 < H1
    outs = tl.arange(0, OUT_PAD)
    out_ok = outs < OUT
    dout = tl.load(dout_ptr + (e * B + rows[:, None]) * OUT + outs[None, :],
                   mask=row_ok[:, None] & out_ok[None, :], other=0.0)

    dh1 = tl.zeros((BLOCK_B, H1_PAD), dtype=tl.float32)
    for n0 in range(0, H2, BLOCK_N):
        cn = n0 + tl.arange(0, BLOCK_N)
        cn_ok = cn < H2
        w3_t = tl.load(w3_ptr + e * H2 * OUT + cn[None, :] * OUT + outs[:, None],
                       mask=out_ok[:, None] & cn_ok[None, :], other=0.0)
        h2 = tl.load(h2_ptr + (e * B + rows[:, None]) * H2 + cn[None, :],
                     mask=row_ok[:, None] & cn_ok[None, :], other=0.0)
        # ReLU passes the gradient where its output is positive (torch's threshold_backward).
        dz2 = tl.where(h2 > 0.0, tl.dot(dout, w3_t, input_precision=PRECISION), 0.0)
        tl.store(dz2_ptr + (e * B + rows[:, None]) * H2 + cn[None, :], dz2, mask=row_ok[:, None] & cn_ok[None, :])
        w2_t = tl.load(w2_ptr + e * H1 * H2 + c1[None, :] * H2 + cn[:, None],
                       mask=cn_ok[:, None] & c1_ok[None, :], other=0.0)
        dh1 = tl.dot(dz2, w2_t, dh1, input_precision=PRECISION)

    h1 = tl.load(h1_ptr + (e * B + rows[:, None]) * H1 + c1[None, :], mask=row_ok[:, None] & c1_ok[None, :],
                 other=0.0)
    dz1 = tl.where(h1 > 0.0, dh1, 0.0)
    tl.store(dz1_ptr + (e * B + rows[:, None]) * H1 + c1[None, :], dz1, mask=row_ok[:, None] & c1_ok[None, :])
    if INPUT_GRAD:
        w1_e = w1_ptr + e * (K1 + K2) * H1
        _grad_times_weight_t(dz1, w1_e, K1, H1, dx1_ptr + e * stride_dx1e, stride_dx1b, stride_dx1k,
                             rows, row_ok, c1, c1_ok, BLOCK_K, PRECISION)
        _grad_times_weight_t(dz1, w1_e + K1 * H1, K2, H1, dx2_ptr + e * stride_dx2e, stride_dx2b, stride_dx2k,
                             rows, row_ok, c1, c1_ok, BLOCK_K, PRECISION)


@triton.jit
def _weight_grad_tile(
    tile, a_ptr, stride_ab, stride_am, M, dz_ptr, N, B, dw_ptr, db_ptr,
    BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Tile ``tile`` (row-major over the tiles of an M x N matrix) of dW = a^T dz, reduced over the batch:
    a [B, M] strided, dz [B, N] and dW [M, N] row-major. With BIAS the first row of tiles also writes db = sum_B dz."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    ms = (tile // n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    ns = (tile % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_ok = bs < B
        a_t = tl.load(a_ptr + bs[None, :] * stride_ab + ms[:, None] * stride_am,
                      mask=m_ok[:, None] & b_ok[None, :], other=0.0)
        dz = tl.load(dz_ptr + bs[:, None] * N + ns[None, :], mask=b_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a_t, dz, acc, input_precision=PRECISION)
        if BIAS:
            bias_acc += tl.sum(dz, axis=0)
    tl.store(dw_ptr + ms[:, None] * N + ns[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])
    if BIAS:
        tl.store(db_ptr + ns, bias_acc, mask=n_ok & (tile // n_tiles == 0))


@triton.jit
def _weight_grad_kernel(
    x1_ptr, x2_ptr, h1_ptr, h2_ptr, dz1_ptr, dz2_ptr, dout_ptr,
    dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, dw3_ptr, db3_ptr,
    B, K1, K2, H1, H2, OUT,
    stride_x1e, stride_x1b, stride_x1k, stride_x2e, stride_x2b, stride_x2k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):
    """Every weight and bias gradient in one launch. Program (t, e) computes tile t of member e in the joined
    tile lists of dW1[:K1] = x1^T dz1 (and db1), dW1[K1:] = x2^T dz1, dW2 = h1^T dz2 (and db2), dW3 = h2^T dout
    (and db3)."""
    e = tl.program_id(1)
    tile = tl.program_id(0)
    end1 = tl.cdiv(K1, BLOCK_M) * tl.cdiv(H1, BLOCK_N)
    end2 = end1 + tl.cdiv(K2, BLOCK_M) * tl.cdiv(H1, BLOCK_N)
    end3 = end2 + tl.cdiv(H1, BLOCK_M) * tl.cdiv(H2, BLOCK_N)
    dz1_e = dz1_ptr + e * B * H1
    dw1_e = dw1_ptr + e * (K1 + K2) * H1
    if tile < end1:
        _weight_grad_tile(tile, x1_ptr + e * stride_x1e, stride_x1b, stride_x1k, K1, dz1_e, H1, B,
                          dw1_e, db1_ptr + e * H1, True, BLOCK_M, BLOCK_N, BLOCK_B, PRECISION)
    elif tile < end2:
        _weight_grad_tile(tile - end1, x2_ptr + e * stride_x2e, stride_x2b, stride_x2k, K2, dz1_e, H1, B,
                          dw1_e + K1 * H1, db1_ptr, False, BLOCK_M, BLOCK_N, BLOCK_B, PRECISION)
    elif tile < end3:
        _weight_grad_tile(tile - end2, h1_ptr + e * B * H1, H1, 1, H1, dz2_ptr + e * B * H2, H2, B,
                          dw2_ptr + e * H1 * H2, db2_ptr + e * H2, True, BLOCK_M, BLOCK_N, BLOCK_B, PRECISION)
    else:
        _weight_grad_tile(tile - end3, h2_ptr + e * B * H2, H2, 1, H2, dout_ptr + e * B * OUT, OUT, B,
                          dw3_ptr + e * H2 * OUT, db3_ptr + e * OUT, True, BLOCK_M, BLOCK_N, BLOCK_B, PRECISION)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _rows_per_program(batch: int, n_members: int, device: torch.device) -> int:
    """Rows of a forward/backward tile: 64, halved (down to 16) while the grid would leave GPU SMs idle."""
    rows = min(64, _pow2(batch))
    while rows > _MIN_DOT and n_members * triton.cdiv(batch, rows) < _sm_count(device):
        rows //= 2
    return rows


@torch.library.custom_op("opt_fast::ensemble_mlp_forward", mutates_args=())
def _forward_op(
    x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
    w3: torch.Tensor, b3: torch.Tensor, precision: str, save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [E, B, OUT], h1, h2); the hidden activations are written only if ``save`` (else they are empty)."""
    w1, b1, w2, b2, w3, b3 = (t.contiguous() for t in (w1, b1, w2, b2, w3, b3))
    out, h1, h2 = _forward_fake(x1, x2, w1, b1, w2, b2, w3, b3, precision, save)
    n_members, batch, k1 = x1.shape
    rows = _rows_per_program(batch, n_members, x1.device)
    # Without a backward pass to feed, h1 and h2 are never written (``out`` stands in as their pointer).
    _forward_kernel[(triton.cdiv(batch, rows), n_members)](
        x1, x2, w1, b1, w2, b2, w3, b3, out, h1 if save else out, h2 if save else out,
        batch, k1, x2.shape[2], w1.shape[2], w2.shape[2], w3.shape[2],
        x1.stride(0), x1.stride(1), x1.stride(2), x2.stride(0), x2.stride(1), x2.stride(2),
        SAVE=save, BLOCK_B=rows, BLOCK_K=_BLOCK_K, H1_PAD=_pow2(w1.shape[2]), BLOCK_N=_BLOCK_N,
        OUT_PAD=_pow2(w3.shape[2]), PRECISION=precision,
    )
    return out, h1, h2


@_forward_op.register_fake
def _forward_fake(
    x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
    w3: torch.Tensor, b3: torch.Tensor, precision: str, save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward op's outputs, uninitialised: its shapes for torch.compile, and its allocation."""
    n_members, batch = x1.shape[:2]
    hidden = (w1.shape[2], w2.shape[2]) if save else (0, 0)
    return tuple(x1.new_empty(n_members, batch, width) for width in (w3.shape[2], *hidden))


@torch.library.custom_op("opt_fast::ensemble_mlp_backward", mutates_args=())
def _backward_op(
    dout: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
    h1: torch.Tensor, h2: torch.Tensor, input_grad: bool, param_grad: bool, precision: str,
) -> list[torch.Tensor]:
    """[d x1, d x2, d w1, d b1, d w2, d b2, d w3, d b3]; the input or the parameter gradients are empty when not
    asked for."""
    dout, w1, w2, w3 = (t.contiguous() for t in (dout, w1, w2, w3))
    grads = _backward_fake(dout, x1, x2, w1, w2, w3, h1, h2, input_grad, param_grad, precision)
    dx1, dx2, dw1, db1, dw2, db2, dw3, db3 = grads
    n_members, batch, k1 = x1.shape
    k2, h1_dim, h2_dim, out_dim = x2.shape[2], w1.shape[2], w2.shape[2], w3.shape[2]
    dz1, dz2 = torch.empty_like(h1), torch.empty_like(h2)
    rows = _rows_per_program(batch, n_members, x1.device)
    # Without input gradients dx1, dx2 are never written (``dz1`` stands in as their pointer).
    _backward_kernel[(triton.cdiv(batch, rows), n_members)](
        dout, h1, h2, w1, w2, w3, dz1, dz2, dx1 if input_grad else dz1, dx2 if input_grad else dz1,
        batch, k1, k2, h1_dim, h2_dim, out_dim,
        dx1.stride(0), dx1.stride(1), dx1.stride(2), dx2.stride(0), dx2.stride(1), dx2.stride(2),
        INPUT_GRAD=input_grad, BLOCK_B=rows, BLOCK_K=_BLOCK_K, H1_PAD=_pow2(h1_dim),
        BLOCK_N=_BLOCK_N, OUT_PAD=_pow2(out_dim), PRECISION=precision,
    )
    if param_grad:
        tiles = sum(
            triton.cdiv(m, _BLOCK_W) * triton.cdiv(n, _BLOCK_W)
            for m, n in ((k1, h1_dim), (k2, h1_dim), (h1_dim, h2_dim), (h2_dim, out_dim))
        )
        _weight_grad_kernel[(tiles, n_members)](
            x1, x2, h1, h2, dz1, dz2, dout, dw1, db1, dw2, db2, dw3, db3,
            batch, k1, k2, h1_dim, h2_dim, out_dim,
            x1.stride(0), x1.stride(1), x1.stride(2), x2.stride(0), x2.stride(1), x2.stride(2),
            BLOCK_M=_BLOCK_W, BLOCK_N=_BLOCK_W, BLOCK_B=min(_BLOCK_W, _pow2(batch)), PRECISION=precision,
        )
    return grads


@_backward_op.register_fake
def _backward_fake(
    dout: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
    h1: torch.Tensor, h2: torch.Tensor, input_grad: bool, param_grad: bool, precision: str,
) -> list[torch.Tensor]:
    """The backward op's outputs, uninitialised: its shapes for torch.compile, and its allocation."""
    n_members, batch = x1.shape[:2]
    inputs = [x1.new_empty(n_members, batch, x.shape[2] if input_grad else 0) for x in (x1, x2)]
    params = [
        w1.new_empty(shape if param_grad else (0,))
        for w in (w1, w2, w3)
        for shape in (w.shape, (n_members, 1, w.shape[2]))
    ]
    return inputs + params


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x1, x2, w1, b1, w2, b2, w3, b3, precision, _ = inputs
    _, h1, h2 = output
    ctx.mark_non_differentiable(h1, h2)
    ctx.set_materialize_grads(False)  # h1 and h2 never receive gradients; do not fill zeros for them
    ctx.save_for_backward(x1, x2, w1, b1, w2, b2, w3, b3, h1, h2)
    ctx.precision = precision


def _backward(ctx: Any, dout: torch.Tensor, _dh1: None, _dh2: None) -> tuple[torch.Tensor | None, ...]:
    x1, x2, w1, b1, w2, b2, w3, b3, h1, h2 = ctx.saved_tensors
    needed = ctx.needs_input_grad[:8]
    if torch.is_grad_enabled():
        # create_graph=True: gradients that are themselves differentiable (meta-adaptation's inner step).
        grads = _torch_gradients((x1, x2, w1, b1, w2, b2, w3, b3), dout, needed)
    else:
        input_grad, param_grad = any(needed[:2]), any(needed[2:])
        grads = _backward_op(dout, x1, x2, w1, w2, w3, h1, h2, input_grad, param_grad, ctx.precision)
    return (*(g if need else None for g, need in zip(grads, needed)), None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _torch_gradients(
    inputs: tuple[torch.Tensor, ...], dout: torch.Tensor, needed: Sequence[bool]
) -> list[torch.Tensor | None]:
    """The same gradients by torch autograd on a recomputed forward, differentiable themselves."""
    x1, x2, w1, b1, w2, b2, w3, b3 = inputs
    with torch.enable_grad():
        k1 = x1.shape[2]
        z1 = torch.baddbmm(b1, x1, w1[:, :k1]).baddbmm(x2, w1[:, k1:])
        out = torch.baddbmm(b3, torch.baddbmm(b2, z1.relu(), w2).relu(), w3)
    wanted = [t for t, need in zip(inputs, needed) if need]
    grads = iter(torch.autograd.grad(out, wanted, dout, create_graph=True))
    return [next(grads) if need else None for need in needed]


def _check_params(params: Sequence[LayerParams]) -> tuple[torch.Tensor, ...]:
    """(w1, b1, w2, b2, w3, b3), after checking that they form a supported ensemble."""
    if len(params) != 3:
        raise ValueError(f"the Triton ensemble MLP needs exactly 3 layers (in -> H1 -> H2 -> out), got {len(params)}")
    flat: list[torch.Tensor] = []
    n_members, fan_in = params[0][0].shape[0], params[0][0].shape[1]
    device = params[0][0].device
    for i, (weight, bias, norm_weight, norm_bias) in enumerate(params):
        if norm_weight is not None or norm_bias is not None:
            raise ValueError(f"layer {i}: the Triton ensemble MLP has no LayerNorm; use the torch backend")
        if weight.dim() != 3 or weight.shape[:2] != (n_members, fan_in):
            raise ValueError(f"layer {i}: weight must be [E={n_members}, in={fan_in}, out], got {tuple(weight.shape)}")
        if bias.shape != (n_members, 1, weight.shape[2]):
            raise ValueError(f"layer {i}: bias must be [{n_members}, 1, {weight.shape[2]}], got {tuple(bias.shape)}")
        for name, t in (("weight", weight), ("bias", bias)):
            if t.dtype != torch.float32 or t.device != device:
                raise ValueError(f"layer {i}: {name} must be float32 on {device}, got {t.dtype} on {t.device}")
        flat += [weight, bias]
        fan_in = weight.shape[2]
    _check_device(device)
    return tuple(flat)


def _check_device(device: torch.device) -> None:
    if INTERPRETED and device.type != "cpu":
        raise ValueError(f"Triton runs in interpreter mode (TRITON_INTERPRET=1): tensors must be on cpu, got {device}")
    if not INTERPRETED and device.type != "cuda":
        raise ValueError(
            f"the Triton kernels need CUDA tensors, got {device}; "
            "on CPU set TRITON_INTERPRET=1 before importing kernels"
        )


def _as_members(x: torch.Tensor, name: str, n_members: int, batch: int | None, device: torch.device) -> torch.Tensor:
    """``x`` as [E, B, width]: a shared [B, width] input is broadcast over members (a view, zero member stride)."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(n_members, *x.shape)
    if x.dim() != 3 or x.shape[0] != n_members or (batch is not None and x.shape[1] != batch):
        rows = "B" if batch is None else str(batch)
        raise ValueError(f"{name} must be [{rows}, width] or [E={n_members}, {rows}, width], got {tuple(x.shape)}")
    if x.dtype != torch.float32 or x.device != device:
        raise ValueError(f"{name} must be float32 on {device}, got {x.dtype} on {x.device}")
    return x


def _fused_mlp(x1: torch.Tensor, x2: torch.Tensor, weights: Sequence[torch.Tensor], tf32: bool) -> torch.Tensor:
    """The fused MLP on ``[x1, x2]``; the hidden activations are kept only when a backward pass may follow."""
    n_members, batch = x1.shape[:2]
    widest = max(x1.shape[2], x2.shape[2], *(w.shape[2] for w in weights[::2]))
    if n_members * batch * widest >= 2**31:
        # The kernels index with 32-bit integers.
        raise ValueError(f"E * B * width = {n_members} * {batch} * {widest} must stay below 2**31; split the batch")
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, *weights))
    return _forward_op(x1, x2, *weights, "tf32" if tf32 else "ieee", save)[0]


def triton_ensemble_forward(params: Sequence[LayerParams], x: torch.Tensor, *, tf32: bool = False) -> torch.Tensor:
    """The ensemble MLP ``in -> H1 -> H2 -> out`` (ReLU, no LayerNorm) of ``x`` [B, in] or [E, B, in]: [E, B, out].

    Same result as ``opt_fast.networks.ensemble_forward`` and differentiable w.r.t. ``x`` and every parameter.
    """
    w1, b1, w2, b2, w3, b3 = _check_params(params)
    x = _as_members(x, "x", w1.shape[0], None, w1.device)
    if x.shape[2] != w1.shape[1]:
        raise ValueError(f"x has width {x.shape[2]}, the first layer expects {w1.shape[1]}")
    return _fused_mlp(x, x.detach()[..., :0], (w1, b1, w2, b2, w3, b3), tf32)


def triton_q_values(
    params: Sequence[LayerParams], obs: torch.Tensor, action: torch.Tensor, *, tf32: bool = False
) -> torch.Tensor:
    """Q-values [E, B] of a critic ensemble (out width 1) on ``[obs, action]`` without concatenating them.

    ``obs`` and ``action`` are each [B, width] (shared by all members) or [E, B, width]; the first layer's
    weight rows ``[:obs_dim]`` multiply ``obs`` and rows ``[obs_dim:]`` multiply ``action``. Same result as
    ``opt_fast.networks.q_values``; differentiable w.r.t. obs, action and every parameter.
    """
    w1, b1, w2, b2, w3, b3 = _check_params(params)
    n_members = w1.shape[0]
    obs = _as_members(obs, "obs", n_members, None, w1.device)
    action = _as_members(action, "action", n_members, obs.shape[1], w1.device)
    if obs.shape[2] < 1 or obs.shape[2] + action.shape[2] != w1.shape[1]:
        raise ValueError(
            f"obs width {obs.shape[2]} + action width {action.shape[2]} must equal the first layer's input "
            f"width {w1.shape[1]} (obs width >= 1)"
        )
    if w3.shape[2] != 1:
        raise ValueError(f"a critic has one output, the last layer has {w3.shape[2]}")
    return _fused_mlp(obs, action, (w1, b1, w2, b2, w3, b3), tf32).squeeze(-1)
