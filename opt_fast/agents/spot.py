"""SPOT (Wu et al., 2022; docs/method.md §3.1, §3.3, §4): the AntMaze and Adroit backbone.

SPOT is TD3 with a density constraint instead of TD3+BC's behaviour cloning: a conditional VAE of the
behaviour policy is trained first (``vae_steps``), then the actor minimises
``-E[Q(s, pi(s))] / mean|Q| + lam * E[nelbo_VAE(s, pi(s))]``, keeping its actions where the data has density.
Online, the same loss runs on OPT's kappa-mixed critic with lam cooled towards ``lam * lam_end``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from opt_fast.agents.common import Batch, compile_fullgraph
from opt_fast.agents.td3 import TD3, QFunction, detached, first_heads, per_seed
from opt_fast.config import Config, phase_tau
from opt_fast.networks import EnsembleMLP, adam, ensemble_forward, per_seed_output, q_values

LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0
"""The encoder's log-std is clamped to this range (numerical stability, as SPOT and BCQ)."""
SAMPLE_LATENT_CLIP = 0.5
"""Latents drawn from the prior are clipped to [-0.5, 0.5] when sampling actions (BCQ's decoder)."""


class BehaviourVAE(nn.Module):
    """Conditional VAE of the behaviour policy: encoder q(z | s, a) and decoder a = tanh(D(s, z)), latent 2 x act."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (750, 750),
                 seed_generators: Sequence[torch.Generator | None] = (None,)):
        super().__init__()
        self.latent_dim = 2 * act_dim
        # One output layer for the mean and the log-std (SPOT's two heads on a shared trunk, concatenated).
        self.encoder = EnsembleMLP(1, obs_dim + act_dim, 2 * self.latent_dim, hidden=hidden,
                                   seed_generators=seed_generators)
        self.decoder = EnsembleMLP(1, obs_dim + self.latent_dim, act_dim, hidden=hidden,
                                   seed_generators=seed_generators)

    def nelbo(self, obs: torch.Tensor, action: torch.Tensor, beta: float, frozen: bool = False) -> torch.Tensor:
        """Negative ELBO per sample, one latent draw: mean_a (D(s, z) - a)^2 + beta * mean_z KL(q(z|s,a) || N(0, I)).

        ``frozen`` cuts the VAE's parameters from the graph: the actor's loss differentiates through the VAE with
        respect to the action only. Returns [B] (or [S, B] for seed-batched inputs [S, B, ...]).
        """
        enc, dec = self.encoder.layer_params(), self.decoder.layer_params()
        if frozen:
            enc, dec = detached(enc), detached(dec)
        mean, log_std = per_seed_output(ensemble_forward(enc, torch.cat([obs, action], dim=-1)), obs).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        std = log_std.exp()
        z = mean + std * torch.randn_like(std)
        reconstruction = torch.tanh(per_seed_output(ensemble_forward(dec, torch.cat([obs, z], dim=-1)), obs))
        reconstruction_error = (reconstruction - action).pow(2).mean(dim=-1)
        kl = -0.5 * (1.0 + 2.0 * log_std - mean.pow(2) - std.pow(2)).mean(dim=-1)
        return reconstruction_error + beta * kl

    @torch.no_grad()
    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions of the modelled behaviour policy: the decoder at a prior latent clipped to +-0.5."""
        z = torch.randn(*obs.shape[:-1], self.latent_dim, device=obs.device)
        z = z.clamp(-SAMPLE_LATENT_CLIP, SAMPLE_LATENT_CLIP)
        return torch.tanh(per_seed_output(self.decoder(torch.cat([obs, z], dim=-1)), obs))


def spot_actor_loss(q: torch.Tensor, nelbo: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """SPOT's actor loss: -E[Q] / mean|Q| (no gradient through the scale) + lam * E[nelbo]; per seed."""
    return -q.mean(dim=-1) / q.abs().mean(dim=-1).detach() + lam * nelbo.mean(dim=-1)


class SPOT(TD3):
    """Actor, twin critic Q_off, targets and optimizers as TD3 (with the config's LayerNorm and last-layer init),
    plus the behaviour VAE and SPOT's actor loss."""

    def __init__(self, obs_dim: int, act_dim: int, config: Config, generators: Sequence[torch.Generator | None] = (None,)):
        super().__init__(obs_dim, act_dim, config, generators)
        self.vae = BehaviourVAE(obs_dim, act_dim, config.vae_hidden, generators).to(self.device)
        # The VAE trains only during its own stage, so its optimizer is never reset.
        self.vae_opt = adam(self.vae.parameters(), config.vae_lr)
        self.vae_loss = self._vae_loss
        self.offline_actor_loss = self._offline_actor_loss

    def compile(self) -> None:
        super().compile()
        self.vae_loss = compile_fullgraph(self._vae_loss)
        self.offline_actor_loss = compile_fullgraph(self._offline_actor_loss)

    def _vae_loss(self, batch: Batch) -> torch.Tensor:
        return self.vae.nelbo(batch.obs, batch.action, self.config.vae_beta).mean(dim=-1)

    def actor_loss(self, obs: torch.Tensor, q_fn: QFunction, lam: torch.Tensor | float) -> torch.Tensor:
        """SPOT's actor loss on a critic given as a function of the actions; the VAE stays fixed."""
        pi = self.actor(obs)
        return spot_actor_loss(q_fn(pi), self.vae.nelbo(obs, pi, self.config.vae_beta, frozen=True), lam)

    def _offline_actor_loss(self, obs: torch.Tensor) -> torch.Tensor:
        q1_params = first_heads(self.critic.layer_params())
        backend = self.config.critic_backend
        return self.actor_loss(obs, lambda actions: per_seed(q_values(q1_params, obs, actions, backend),
                                                             obs).select(-2, 0),
                               self.config.spot_lambda)

    def online_actor_loss(self, obs: torch.Tensor, q_mix: QFunction, online_progress: torch.Tensor) -> torch.Tensor:
        """SPOT online (§3.3) on Q_mix, lam_t = lam_spot * max(lam_end, 1 - online_progress)."""
        cooling = torch.clamp(1.0 - online_progress, min=self.config.spot_lambda_end)  # per seed
        return self.actor_loss(obs, q_mix, self.config.spot_lambda * cooling)

    def offline_update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """Steps 0 .. vae_steps-1 train the VAE; then SPOT steps: critic every step, actor and Polyak updates
        every ``policy_delay`` steps."""
        if step < self.config.vae_steps:
            return {"vae_loss": self.optimize(self.vae_loss(batch), [self.vae_opt])}
        step -= self.config.vae_steps
        info = {"critic_loss": self.optimize(self.critic_loss(batch), [self.critic_opt])}
        if (step + 1) % self.config.policy_delay == 0:
            info["actor_loss"] = self.optimize(self.offline_actor_loss(batch.obs), [self.actor_opt],
                                               self.target_pairs(), phase_tau(self.config, "offline"))
        return info

    def modules(self) -> dict[str, nn.Module]:
        return dict(super().modules(), vae=self.vae)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(super().optimizers(), vae_opt=self.vae_opt)
