"""OPT (OPT.md §3.2-§3.4) composed on a backbone (TD3, or SPOT with ``config.backbone``), and the online
fine-tuning it shares with the baseline.

With ``config.opt`` off this is the paper's "TD3" / "SPOT" baseline: the same balanced replay and fine-tuning
update, without Q_on (kappa is then irrelevant: the actor follows Q_off alone).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from opt_fast.agents.spot import SPOT
from opt_fast.agents.td3 import (TD3, Batch, compile_loss, detached, members, network_options, optimizer_step, td_losses,
                                 td_target)
from opt_fast.config import Config, online_discount
from opt_fast.networks import Critic, DensityRatio, LayerParams, adam, polyak_update, q_values, stack_params

_LOG_EPS = 1e-10


def density_ratio_loss(w_off: torch.Tensor, w_on: torch.Tensor) -> torch.Tensor:
    """JS-type f-divergence loss of balanced replay: E_off[-log(2 / (w + 1))] - E_on[log(2w / (w + 1))]."""
    off_term = -torch.log(2.0 / (w_off + 1.0) + _LOG_EPS).mean()
    on_term = torch.log(2.0 * w_on / (w_on + 1.0) + _LOG_EPS).mean()
    return off_term - on_term


def balanced_priorities(w_batch: torch.Tensor, w_off: torch.Tensor, temperature: float) -> torch.Tensor:
    """New priorities of sampled items: w^(1/T) / mean_offline(w^(1/T)), clipped to [1e-3, 1e3] (§3.3)."""
    scaled = w_batch.pow(1.0 / temperature) / w_off.pow(1.0 / temperature).mean()
    return scaled.clamp(1e-3, 1e3)


def meta_adaptation_loss(
    params: list[LayerParams], off: Batch, y_off: torch.Tensor, on: Batch, y_on: torch.Tensor, config: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_off(psi) + w L_on(psi - alpha_in grad L_off(psi)), differentiable through the inner SGD step (§3.2).

    Returns (total, L_off, L_on at the adapted parameters).
    """
    loss_off = td_losses(params, off, y_off).sum()
    flat = [p for layer in params for p in layer if p is not None]
    grads = iter(torch.autograd.grad(loss_off, flat, create_graph=True))
    adapted = [
        tuple(None if p is None else p - config.meta_inner_lr * next(grads) for p in layer) for layer in params
    ]
    loss_on = td_losses(adapted, on, y_on).sum()  # type: ignore[arg-type]
    if config.meta_loss_weight == "ratio":
        weight = (torch.minimum(loss_off, loss_on) / loss_on).detach()
    else:
        weight = torch.ones((), device=loss_on.device)
    return loss_off + weight * loss_on, loss_off, loss_on


class OPTAgent:
    """The backbone (actor, Q_off), optionally Q_on, and the density-ratio net of balanced replay."""

    def __init__(self, obs_dim: int, act_dim: int, config: Config):
        self.config = config
        # Every update after the offline phase (Q_on's pre-training, fine-tuning) uses the online discount.
        self.online_config = dataclasses.replace(config, gamma=online_discount(config))
        self.backbone = (SPOT if config.backbone == "spot" else TD3)(obs_dim, act_dim, config)
        device = self.backbone.device
        self.q_on: Critic | None = None
        if config.opt:
            # A new twin critic, randomly initialised, same architecture as Q_off (§2, phase 2b).
            self.q_on = Critic(obs_dim, act_dim, n_heads=2, **network_options(config, config.critic_init)).to(device)
            self.q_on_target = copy.deepcopy(self.q_on).requires_grad_(False)
            self.q_on_opt = adam(self.q_on.parameters(), config.critic_lr)
        self.density = DensityRatio(obs_dim, act_dim, hidden=config.hidden).to(device)
        self.density_opt = adam(self.density.parameters(), config.density_lr)
        self.finetune_critic_loss = self._finetune_critic_loss
        self.finetune_actor_loss = self._finetune_actor_loss
        self.density_step_loss = self._density_step_loss

    def compile(self) -> None:
        """Compile the loss computations (forward and backward graphs); optimizer steps stay eager (fused Adam).

        The meta-adaptation loss stays eager: TorchDynamo does not trace ``torch.autograd.grad`` with
        ``create_graph``, and its ``torch.func.grad`` form compiled but ran ~20x slower than eager here.
        """
        self.backbone.compile()
        self.finetune_critic_loss = compile_loss(self._finetune_critic_loss)
        self.finetune_actor_loss = compile_loss(self._finetune_actor_loss)
        self.density_step_loss = compile_loss(self._density_step_loss)

    # ---------------------------------------------------------------- phase 2b: online pre-training of Q_on
    def pretrain_losses(self, off: Batch | None, on: Batch | None) -> dict[str, torch.Tensor]:
        assert self.q_on is not None
        target_params = self.q_on_target.layer_params()
        actor_target = self.backbone.actor_target  # the frozen offline target actor
        params = self.q_on.layer_params()
        if off is not None and on is not None:
            y_off = td_target(target_params, actor_target, off, self.online_config)
            y_on = td_target(target_params, actor_target, on, self.online_config)
            if self.config.meta_adaptation:
                total, loss_off, loss_on = meta_adaptation_loss(params, off, y_off, on, y_on, self.config)
            else:
                loss_off = td_losses(params, off, y_off).sum()
                loss_on = td_losses(params, on, y_on).sum()
                total = loss_off + loss_on
            return {"loss": total, "loss_off": loss_off, "loss_on": loss_on}
        batch = off if off is not None else on
        assert batch is not None
        loss = td_losses(params, batch, td_target(target_params, actor_target, batch, self.online_config)).sum()
        return {"loss": loss}

    def pretrain_update(self, off: Batch | None, on: Batch | None, step: int) -> dict[str, torch.Tensor]:
        """One update of Q_on; pi and Q_off stay frozen. Q_on's targets move every ``policy_delay`` updates."""
        if self.q_on is None:
            raise RuntimeError("online pre-training needs OPT on (config.opt)")
        losses = self.pretrain_losses(off, on)
        optimizer_step(self.q_on_opt, losses["loss"])
        if (step + 1) % self.config.policy_delay == 0:
            polyak_update(self.q_on_target, self.q_on, self.config.tau)
        return {k: v.detach() for k, v in losses.items()}

    # ---------------------------------------------------------------- phase 3: online fine-tuning
    def critics(self) -> list[Critic]:
        return [self.backbone.critic] if self.q_on is None else [self.backbone.critic, self.q_on]

    def target_critics(self) -> list[Critic]:
        targets = [self.backbone.critic_target]
        return targets if self.q_on is None else targets + [self.q_on_target]

    def _density_pair(self, first: Batch, second: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """w on two batches in one call of the density net."""
        w = self.density(torch.cat([first.obs, second.obs]), torch.cat([first.action, second.action]))
        return w[: len(first.obs)], w[len(first.obs):]

    def _density_step_loss(self, off: Batch, on: Batch) -> torch.Tensor:
        return density_ratio_loss(*self._density_pair(off, on))

    @torch.no_grad()
    def priorities(self, batch: Batch, off: Batch) -> torch.Tensor:
        return balanced_priorities(*self._density_pair(batch, off), self.config.replay_temperature)

    def _finetune_critic_loss(self, batch: Batch) -> torch.Tensor:
        """TD losses of Q_off and Q_on on the same batch, each with its own targets, as one batched call."""
        target = td_target(
            stack_params(*self.target_critics()), self.backbone.actor_target, batch, self.online_config
        )
        return td_losses(stack_params(*self.critics()), batch, target)

    def _finetune_actor_loss(self, obs: torch.Tensor, kappa: torch.Tensor, online_progress: torch.Tensor):
        """The backbone's online actor loss on Q_mix = (1 - kappa) Q_off_1 + kappa Q_on_1 (§3.3).

        The critics are detached: the actor's loss must not put gradients into them.
        """
        q1_params = detached(members(stack_params(*self.critics()), range(0, 2 * len(self.critics()), 2)))

        def q_mix(actions: torch.Tensor) -> torch.Tensor:
            q = q_values(q1_params, obs, actions)
            return q[0] if self.q_on is None else (1.0 - kappa) * q[0] + kappa * q[1]

        return self.backbone.online_actor_loss(obs, q_mix, online_progress)

    def start_finetuning(self) -> None:
        """The offline-to-online switch: fresh Adam states for the actor and Q_off (§3.3)."""
        self.backbone.reset_optimizers()

    def finetune_update(
        self, off: Batch, on: Batch, batch: Batch, kappa: float, online_progress: float, step: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One fine-tuning update (§2 phase 3); returns the info and the sampled items' new priorities.

        density-ratio step -> priorities of the prioritised ``batch`` -> TD step of Q_off (and Q_on) ->
        every ``policy_delay`` updates: actor step on the kappa-mixed critic and Polyak update of all targets.
        ``online_progress`` is the fraction of the online budget spent (SPOT cools its density weight with it).
        """
        info = {"density_loss": optimizer_step(self.density_opt, self.density_step_loss(off, on))}
        new_priorities = self.priorities(batch, off)
        critic_losses = self.finetune_critic_loss(batch)
        optimizers = [self.backbone.critic_opt] + ([] if self.q_on is None else [self.q_on_opt])
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        critic_losses.sum().backward()
        for optimizer in optimizers:
            optimizer.step()
        info["critic_loss"] = critic_losses[0].detach()
        if self.q_on is not None:
            info["q_on_loss"] = critic_losses[1].detach()
        if (step + 1) % self.config.policy_delay == 0:
            device = batch.obs.device
            actor_loss = self.finetune_actor_loss(
                batch.obs, torch.tensor(kappa, device=device), torch.tensor(online_progress, device=device)
            )
            info["actor_loss"] = optimizer_step(self.backbone.actor_opt, actor_loss)
            self.backbone.update_targets()
            if self.q_on is not None:
                polyak_update(self.q_on_target, self.q_on, self.config.tau)
        return info, new_priorities

    # ---------------------------------------------------------------- checkpoints
    def modules(self) -> dict[str, nn.Module]:
        modules = dict(self.backbone.modules(), density=self.density)
        if self.q_on is not None:
            modules.update(q_on=self.q_on, q_on_target=self.q_on_target)
        return modules

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = dict(self.backbone.optimizers(), density_opt=self.density_opt)
        if self.q_on is not None:
            optimizers["q_on_opt"] = self.q_on_opt
        return optimizers

    def state_dict(self) -> dict[str, dict]:
        return {name: obj.state_dict() for name, obj in {**self.modules(), **self.optimizers()}.items()}

    def load_backbone_state(self, state: dict[str, dict]) -> None:
        """Load the backbone (actor, Q_off, targets, optimizers) from a full state, leaving the rest as it is."""
        self._load({**self.backbone.modules(), **self.backbone.optimizers()}, state)

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self._load({**self.modules(), **self.optimizers()}, state)

    @staticmethod
    def _load(objects: dict, state: dict[str, dict]) -> None:
        missing = sorted(set(objects) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks {missing}; it was written by a run with another configuration")
        for name, obj in objects.items():
            obj.load_state_dict(state[name])

