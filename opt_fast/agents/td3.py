"""TD3 and TD3+BC (docs/method.md §3, §3.1): the MuJoCo backbone.

The losses are functions of layer parameters so that the same code serves one critic, several critics stacked
into one batched call (Q_off and Q_on), and the inner-stepped parameters of OPT's meta-adaptation.

A batch is one seed's ([B, ...]) or S seeds' ([S, B, ...], seed-batched networks); every loss is then per seed
([S]), and the agent backpropagates their sum: the seeds' parameters are disjoint, so each gets its own gradient.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from opt_fast.agents.common import Batch, UpdateFn, compile_fullgraph, compiled_updates, eager_updates, optimize
from opt_fast.config import Config, phase_tau
from opt_fast.networks import Critic, DeterministicActor, LayerParams, adam, q_values, resolve_critic_backend


QFunction = Callable[[torch.Tensor], torch.Tensor]
"""Q(s, a) of a fixed batch of states, as a function of the actions: [B, act] -> [B]."""


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
        next_q = per_seed(q_values(target_params, batch.next_obs, next_action, config.critic_backend), batch.obs)
        next_q = next_q.unflatten(-2, (-1, 2)).amin(dim=-2)
        return batch.reward.unsqueeze(-2) + config.gamma * (1.0 - batch.done.unsqueeze(-2)) * next_q


def td_losses(params: Sequence[LayerParams], batch: Batch, target: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """L_TD = sum_{j=1,2} E[(Q_j(s, a) - y)^2] for each twin pair of the (stacked) ensemble: [(S,) n_twins]."""
    q = per_seed(q_values(params, batch.obs, batch.action, backend), batch.obs).unflatten(-2, (-1, 2))
    return (q - target.unsqueeze(-2)).pow(2).mean(dim=-1).sum(dim=-1)


def td3_bc_actor_loss(actor: nn.Module, critic_params: Sequence[LayerParams], batch: Batch, alpha: float,
                      backend: str = "torch"):
    """TD3+BC: -lam E[Q_1(s, pi(s))] + E[(pi(s) - a)^2], lam = alpha / mean|Q_1| (no gradient through lam); per
    seed."""
    pi = actor(batch.obs)
    q = per_seed(q_values(first_heads(critic_params), batch.obs, pi, backend), batch.obs).select(-2, 0)
    lam = alpha / q.abs().mean(dim=-1).detach()
    return -lam * q.mean(dim=-1) + (pi - batch.action).pow(2).mean(dim=(-2, -1))


def with_critic_backend(config: Config) -> Config:
    """``config`` with its critic backend resolved for its device (``auto`` -> ``triton`` or ``torch``)."""
    return dataclasses.replace(config, critic_backend=resolve_critic_backend(config.critic_backend, config.device))


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
        self.config = config = with_critic_backend(config)
        self.device = torch.device(config.device)
        self.n_seeds = len(generators)
        self.actor = DeterministicActor(obs_dim, act_dim,
                                        **network_options(config, config.actor_init, generators)).to(self.device)
        self.critic = Critic(obs_dim, act_dim, n_heads=2, backend=config.critic_backend,
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
        return td_losses(self.critic.layer_params(), batch, target, self.config.critic_backend).sum(dim=-1)

    def _bc_actor_loss(self, batch: Batch) -> torch.Tensor:
        return td3_bc_actor_loss(self.actor, self.critic.layer_params(), batch, self.config.bc_alpha,
                                 self.config.critic_backend)

    def online_actor_loss(self, obs: torch.Tensor, q_mix: QFunction, online_progress: torch.Tensor) -> torch.Tensor:
        """TD3 online: -E[Q_mix(s, pi(s))], no BC term (§3.3); per seed. ``online_progress`` is unused by TD3."""
        return -q_mix(self.actor(obs)).mean(dim=-1)

    def offline_update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One TD3+BC step: critic every step; actor and Polyak updates every ``policy_delay`` steps."""
        info = {"critic_loss": self.optimize(self.critic_loss(batch), [self.critic_opt])}
        if (step + 1) % self.config.policy_delay == 0:
            info["actor_loss"] = self.optimize(self.bc_actor_loss(batch), [self.actor_opt], self.target_pairs(),
                                               phase_tau(self.config, "offline"))
        return info

    def optimize(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer],
                 polyak: Sequence[tuple[nn.Module, nn.Module]] = (), tau: float | None = None) -> torch.Tensor:
        """:func:`optimize` with this agent's parameter updates (eager, or compiled by :meth:`compile`); Polyak rate
        ``tau``, the config's by default."""
        return optimize(loss, optimizers, self.apply_updates, polyak, self.config.tau if tau is None else tau)

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, source) of the networks whose targets follow them by Polyak averaging."""
        return [(self.critic_target, self.critic), (self.actor_target, self.actor)]

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}
