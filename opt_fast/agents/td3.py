"""TD3 and TD3+BC (OPT.md §3, §3.1): the MuJoCo backbone.

The losses are functions of layer parameters so that the same code serves one critic, several critics stacked
into one batched call (Q_off and Q_on), and the inner-stepped parameters of OPT's meta-adaptation.

A batch is one seed's ([B, ...]) or S seeds' ([S, B, ...], seed-batched networks); every loss is then per seed
([S]), and the agent backpropagates their sum: the seeds' parameters are disjoint, so each gets its own gradient.
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from opt_fast.config import Config
from opt_fast.networks import Critic, DeterministicActor, LayerParams, adam, polyak_update, q_values


QFunction = Callable[[torch.Tensor], torch.Tensor]
"""Q(s, a) of a fixed batch of states, as a function of the actions: [B, act] -> [B]."""


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


def members(params: Sequence[LayerParams], index: slice) -> list[LayerParams]:
    """The given ensemble members' parameters (e.g. ``slice(0, None, 2)``: Q_1 of every twin pair)."""
    return [tuple(None if p is None else p[index] for p in layer) for layer in params]  # type: ignore[misc]


def detached(params: Sequence[LayerParams]) -> list[LayerParams]:
    """Parameters cut from the graph: the actor's loss must not put gradients into the critics."""
    return [tuple(None if p is None else p.detach() for p in layer) for layer in params]  # type: ignore[misc]


def per_seed(values: torch.Tensor, batch_obs: torch.Tensor) -> torch.Tensor:
    """Ensemble outputs [E, B] as [S, E / S, B] for a seed-batched ``batch_obs`` [S, B, obs], else [E, B]."""
    if batch_obs.dim() == 3:
        return values.view(batch_obs.shape[0], -1, values.shape[-1])
    return values


def first_heads(params: Sequence[LayerParams]) -> list[LayerParams]:
    """Q_1 of every twin pair of a (stacked, seed-batched) critic ensemble, cut from the graph: the critic an actor
    follows, without putting gradients into it."""
    return detached(members(params, slice(0, None, 2)))


def td_target(
    target_params: Sequence[LayerParams], target_actor: nn.Module, batch: Batch, config: Config
) -> torch.Tensor:
    """y = r + gamma (1 - done) min_j Qtarg_j(s', a') with target-policy smoothing, per twin pair: [(S,) n_twins, B]."""
    with torch.no_grad():
        noise = (torch.randn_like(batch.action) * config.policy_noise).clamp(-config.noise_clip, config.noise_clip)
        next_action = (target_actor(batch.next_obs) + noise).clamp(-1.0, 1.0)
        next_q = per_seed(q_values(target_params, batch.next_obs, next_action), batch.obs)
        next_q = next_q.unflatten(-2, (-1, 2)).amin(dim=-2)
        return batch.reward.unsqueeze(-2) + config.gamma * (1.0 - batch.done.unsqueeze(-2)) * next_q


def td_losses(params: Sequence[LayerParams], batch: Batch, target: torch.Tensor) -> torch.Tensor:
    """L_TD = sum_{j=1,2} E[(Q_j(s, a) - y)^2] for each twin pair of the (stacked) ensemble: [(S,) n_twins]."""
    q = per_seed(q_values(params, batch.obs, batch.action), batch.obs).unflatten(-2, (-1, 2))
    return (q - target.unsqueeze(-2)).pow(2).mean(dim=-1).sum(dim=-1)


def td3_bc_actor_loss(actor: nn.Module, critic_params: Sequence[LayerParams], batch: Batch, alpha: float):
    """TD3+BC: -lam E[Q_1(s, pi(s))] + E[(pi(s) - a)^2], lam = alpha / mean|Q_1| (no gradient through lam); per
    seed."""
    pi = actor(batch.obs)
    q = per_seed(q_values(first_heads(critic_params), batch.obs, pi), batch.obs).select(-2, 0)
    lam = alpha / q.abs().mean(dim=-1).detach()
    return -lam * q.mean(dim=-1) + (pi - batch.action).pow(2).mean(dim=(-2, -1))


def network_options(config: Config, last_layer_init: float,
                    seed_generators: Sequence[torch.Generator | None] = (None,)) -> dict[str, Any]:
    """EnsembleMLP options of an actor or critic: hidden sizes, LayerNorm, last-layer init (0 = PyTorch default),
    and the seeds' generators.

    OPT's Q_on uses the critic's options, so it has Q_off's architecture on either backbone.
    """
    return dict(hidden=config.hidden, layer_norm=config.layer_norm, last_layer_init=last_layer_init or None,
                seed_generators=seed_generators)


def seed_generators(seeds: Sequence[int] | None) -> list[torch.Generator | None]:
    """One CPU generator per seed, each drawing what torch's global generator draws after ``manual_seed(seed)``;
    ``None``: the global generator itself (one seed)."""
    return [None] if seeds is None else [torch.Generator().manual_seed(seed) for seed in seeds]


class TD3:
    """Actor, twin critic Q_off, their target networks and optimizers; TD3+BC offline updates.

    With ``seeds``, the networks hold one independent copy per seed (seed-batched), each initialised as a one-seed
    agent built after ``torch.manual_seed(seed)``; one Adam over the stacked parameters is S independent Adams
    (Adam is elementwise, and the seeds step together).
    """

    def __init__(self, obs_dim: int, act_dim: int, config: Config, generators: Sequence[torch.Generator | None] = (None,)):
        self.config = config
        self.device = torch.device(config.device)
        self.n_seeds = len(generators)
        self.actor = DeterministicActor(obs_dim, act_dim,
                                        **network_options(config, config.actor_init, generators)).to(self.device)
        self.critic = Critic(obs_dim, act_dim, n_heads=2,
                             **network_options(config, config.critic_init, generators)).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.reset_optimizers()
        self.critic_loss = self._critic_loss
        self.bc_actor_loss = self._bc_actor_loss
        self.apply_updates: UpdateFn = eager_updates

    def compile(self) -> None:
        self.critic_loss = compile_fullgraph(self._critic_loss)
        self.bc_actor_loss = compile_fullgraph(self._bc_actor_loss)
        self.apply_updates = compiled_updates()

    def reset_optimizers(self) -> None:
        """Fresh Adam states (the paper resets actor and Q_off optimizers at the offline-to-online switch)."""
        self.actor_opt = adam(self.actor.parameters(), self.config.actor_lr)
        self.critic_opt = adam(self.critic.parameters(), self.config.critic_lr)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions: obs [B, obs] of a one-seed agent, or [S, B, obs] (one row set per seed)."""
        return self.actor(obs)

    def _critic_loss(self, batch: Batch) -> torch.Tensor:
        target = td_target(self.critic_target.layer_params(), self.actor_target, batch, self.config)
        return td_losses(self.critic.layer_params(), batch, target).sum(dim=-1)

    def _bc_actor_loss(self, batch: Batch) -> torch.Tensor:
        return td3_bc_actor_loss(self.actor, self.critic.layer_params(), batch, self.config.bc_alpha)

    def online_actor_loss(self, obs: torch.Tensor, q_mix: QFunction, online_progress: torch.Tensor) -> torch.Tensor:
        """TD3 online: -E[Q_mix(s, pi(s))], no BC term (§3.3); per seed. ``online_progress`` is unused by TD3."""
        return -q_mix(self.actor(obs)).mean(dim=-1)

    def offline_update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One TD3+BC step: critic every step; actor and Polyak updates every ``policy_delay`` steps."""
        info = {"critic_loss": self.optimize(self.critic_loss(batch), [self.critic_opt])}
        if (step + 1) % self.config.policy_delay == 0:
            info["actor_loss"] = self.optimize(self.bc_actor_loss(batch), [self.actor_opt], self.target_pairs())
        return info

    def optimize(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer],
                 polyak: Sequence[tuple[nn.Module, nn.Module]] = ()) -> torch.Tensor:
        """:func:`optimize` with this agent's parameter updates (eager, or compiled by :meth:`compile`)."""
        return optimize(loss, optimizers, self.apply_updates, polyak, self.config.tau)

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, source) of the networks whose targets follow them by Polyak averaging."""
        return [(self.critic_target, self.critic), (self.actor_target, self.actor)]

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}


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
        if any(group is None for group in groups):
            eager_updates(optimizers, polyak, tau)
            return
        for group in groups:
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
