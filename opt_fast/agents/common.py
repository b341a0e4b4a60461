"""What every agent shares (TD3, SPOT, OPT, SAC, and the behaviour policies of data generation): the batch of
transitions, one optimisation step (:func:`optimize`), and its compiled form (fullgraph ``torch.compile`` of the
losses, Adam written out for Inductor, Polyak updates)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from opt_fast.networks import polyak_update


@dataclass
class Batch:
    """A batch of transitions as float32 tensors, [B, ...] or [S, B, ...]; ``done`` is 1.0 only for true
    terminations."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor

    @classmethod
    def from_numpy(cls, arrays: dict, device: torch.device | str) -> "Batch":
        return cls(*(torch.as_tensor(arrays[k], device=device) for k in ("obs", "action", "reward", "next_obs", "done")))

    @classmethod
    def stack(cls, per_seed: Sequence[dict], device: torch.device | str) -> "Batch":
        """S seeds' batches (numpy arrays of the same sizes) as one [S, B, ...] batch."""
        keys = ("obs", "action", "reward", "next_obs", "done")
        return cls(*(torch.as_tensor(np.stack([arrays[k] for arrays in per_seed]), device=device) for k in keys))


def compile_fullgraph(fn: Callable) -> Callable:
    """``torch.compile(fn, fullgraph=True)`` (CUDA graphs on CUDA), falling back to eager with a message if it fails.

    Compilation fails before the compiled code runs, so re-running ``fn`` eagerly after a failed compiled call is
    safe, for the pure loss functions and for the in-place parameter updates alike.
    """
    mode = "reduce-overhead" if torch.cuda.is_available() else None
    compiled = torch.compile(fn, fullgraph=True, mode=mode)
    current = [compiled]

    def call(*args, **kwargs):
        try:
            return current[0](*args, **kwargs)
        except Exception as err:  # noqa: BLE001 -- any compiler failure means: run eagerly
            if current[0] is fn:
                raise
            name = getattr(fn, "__qualname__", repr(fn))
            print(f"opt-fast: torch.compile failed for {name} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                  "running it eagerly", file=sys.stderr)
            current[0] = fn
            return fn(*args, **kwargs)

    return call


UpdateFn = Callable[..., None]
"""Applies optimizer steps and Polyak updates: ``(optimizers, polyak=((target, source), ...), tau=0.0)``."""


def eager_updates(optimizers: Sequence[torch.optim.Optimizer], polyak: Sequence[tuple[nn.Module, nn.Module]] = (),
                  tau: float = 0.0) -> None:
    """torch's fused Adam step of every optimizer, then target <- (1 - tau) target + tau source for each pair."""
    for optimizer in optimizers:
        optimizer.step()
    for target, source in polyak:
        polyak_update(target, source, tau)


def _adam(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
          exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: float, beta1: float, beta2: float,
          eps: float) -> None:
    """One optimizer's Adam update as torch's fused Adam computes it, on its state tensors: pure tensor arithmetic
    that Inductor fuses, without a graph break.

    The compiled functions enter ``no_grad`` in their bodies: a ``@torch.no_grad()`` decorator would make them all
    one wrapper function to TorchDynamo, whose traces would then share one cache and its recompile limit."""
    with torch.no_grad():
        for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            step.add_(1)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / (1 - beta2**step).sqrt()).add_(eps)
            param.sub_(lr / (1 - beta1**step) * exp_avg / denom)


def _lerp(targets: list[torch.Tensor], sources: list[torch.Tensor], tau: float) -> None:
    """The Polyak updates of one step: target <- (1 - tau) target + tau source."""
    with torch.no_grad():
        torch._foreach_lerp_(targets, sources, tau)


def _adam_group(optimizer: torch.optim.Optimizer) -> tuple | None:
    """An :func:`opt_fast.networks.adam` optimizer's parameters with gradients, their state and settings, or None
    before its first step (Adam creates its state there)."""
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    if not params or any(not optimizer.state.get(p) for p in params):
        return None
    states = [optimizer.state[p] for p in params]
    return (params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states], group["lr"], *group["betas"], group["eps"])


def compiled_updates() -> UpdateFn:
    """:func:`eager_updates` compiled: each optimizer's Adam step as one graph (Adam's arithmetic on the optimizer's
    own state, so checkpoints and resumption stay torch's Adam) and the step's Polyak updates as another. TorchDynamo
    traces a function once per shape of its arguments: per optimizer (critic, actor, density net, VAE) and per set of
    Polyak pairs, a handful of traces whatever the update points combine. The first step of a fresh optimizer runs
    eagerly: it creates Adam's state."""
    adam_kernel, lerp_kernel = compile_fullgraph(_adam), compile_fullgraph(_lerp)

    def apply(optimizers: Sequence[torch.optim.Optimizer], polyak: Sequence[tuple[nn.Module, nn.Module]] = (),
              tau: float = 0.0) -> None:
        groups = [_adam_group(optimizer) for optimizer in optimizers]
        ready = [group for group in groups if group is not None]
        if len(ready) < len(groups):
            eager_updates(optimizers, polyak, tau)
            return
        for group in ready:
            adam_kernel(*group)
        if polyak:
            lerp_kernel([p for target, _ in polyak for p in target.parameters()],
                        [p for _, source in polyak for p in source.parameters()], tau)

    return apply


def optimize(loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer], apply: UpdateFn = eager_updates,
             polyak: Sequence[tuple[nn.Module, nn.Module]] = (), tau: float = 0.0) -> torch.Tensor:
    """Backpropagate ``loss`` (summed over seeds and heads) into the optimizers' parameters, step them and apply the
    Polyak updates; returns the detached loss."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    apply(optimizers, polyak, tau)
    return loss.detach()
