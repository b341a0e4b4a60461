"""OPT (docs/method.md §3.2-§3.4) composed on a backbone (TD3, or SPOT with ``config.backbone``), and the online
fine-tuning it shares with the baseline.

With ``config.opt`` off this is the paper's "TD3" / "SPOT" baseline: the same balanced replay and fine-tuning
update, without Q_on (kappa is then irrelevant: the actor follows Q_off alone).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from opt_fast.agents.spot import SPOT
from opt_fast.agents.common import Batch, compile_fullgraph
from opt_fast.agents.td3 import (TD3, first_heads, network_options, per_seed, seed_generators, td_losses, td_target,
                                 with_critic_backend)
from opt_fast.config import Config, online_discount, phase_tau
from opt_fast.networks import Critic, DensityRatio, LayerParams, adam, q_values, stack_params

_LOG_EPS = 1e-10


def density_ratio_loss(w_off: torch.Tensor, w_on: torch.Tensor) -> torch.Tensor:
    """JS-type f-divergence loss of balanced replay: E_off[-log(2 / (w + 1))] - E_on[log(2w / (w + 1))]; per seed."""
    off_term = -torch.log(2.0 / (w_off + 1.0) + _LOG_EPS).mean(dim=-1)
    on_term = torch.log(2.0 * w_on / (w_on + 1.0) + _LOG_EPS).mean(dim=-1)
    return off_term - on_term


def balanced_priorities(w_batch: torch.Tensor, w_off: torch.Tensor, temperature: float) -> torch.Tensor:
    """New priorities of sampled items: w^(1/T) / mean_offline(w^(1/T)), clipped to [1e-3, 1e3] (§3.3); per seed."""
    scaled = w_batch.pow(1.0 / temperature) / w_off.pow(1.0 / temperature).mean(dim=-1, keepdim=True)
    return scaled.clamp(1e-3, 1e3)


def meta_adaptation_loss(
    params: list[LayerParams], off: Batch, y_off: torch.Tensor, on: Batch, y_on: torch.Tensor, config: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_off(psi) + w L_on(psi - alpha_in grad L_off(psi)), differentiable through the inner SGD step (§3.2).

    Returns (total, L_off, L_on at the adapted parameters), each per seed. The seeds' parameters are disjoint, so
    the gradient of the summed L_off is each seed's own inner gradient.
    """
    loss_off = td_losses(params, off, y_off, config.critic_backend).sum(dim=-1)
    flat = [p for layer in params for p in layer if p is not None]
    grads = iter(torch.autograd.grad(loss_off.sum(), flat, create_graph=True))
    adapted = [
        tuple(None if p is None else p - config.meta_inner_lr * next(grads) for p in layer) for layer in params
    ]
    loss_on = td_losses(adapted, on, y_on, config.critic_backend).sum(dim=-1)  # type: ignore[arg-type]
    if config.meta_loss_weight == "ratio":
        weight = (torch.minimum(loss_off, loss_on) / loss_on).detach()
    else:
        weight = torch.ones_like(loss_on)
    return loss_off + weight * loss_on, loss_off, loss_on


class OPTAgent:
    """The backbone (actor, Q_off), optionally Q_on, and the density-ratio net of balanced replay.

    ``seeds``: one agent per seed in seed-batched networks (see :class:`TD3`), updated by one batched call per
    network on [S, B, ...] batches; each seed starts where a one-seed agent built after ``torch.manual_seed(seed)``
    starts, and :meth:`seed_state_dicts` gives each seed's part in a one-seed agent's format. Without ``seeds``,
    one agent drawn from torch's global generator.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: Config, seeds: Sequence[int] | None = None):
        self.config = config = with_critic_backend(config)
        # Every update after the offline phase (Q_on's pre-training, fine-tuning) uses the online discount.
        self.online_config = dataclasses.replace(config, gamma=online_discount(config))
        generators = seed_generators(seeds)
        self.n_seeds = len(generators)
        self.backbone = (SPOT if config.backbone == "spot" else TD3)(obs_dim, act_dim, config, generators)
        device = self.backbone.device
        self.q_on: Critic | None = None
        if config.opt:
            # A new twin critic, randomly initialised, same architecture as Q_off (§2, phase 2b).
            self.q_on = Critic(obs_dim, act_dim, n_heads=2, backend=config.critic_backend,
                               **network_options(config, config.critic_init, generators)).to(device)
            self.q_on_target = copy.deepcopy(self.q_on).requires_grad_(False)
            self.q_on_opt = adam(self.q_on.parameters(), config.critic_lr)
        self.density = DensityRatio(obs_dim, act_dim, hidden=config.hidden, seed_generators=generators).to(device)
        self.density_opt = adam(self.density.parameters(), config.density_lr)
        self.finetune_critic_loss = self._finetune_critic_loss
        self.finetune_actor_loss = self._finetune_actor_loss
        self.density_step_loss = self._density_step_loss
        self.priorities = self._priorities

    def compile(self) -> None:
        """Compile the loss computations (forward and backward graphs), the priorities, and the parameter updates
        (Adam steps and Polyak updates, :func:`opt_fast.agents.common.compiled_updates`), each one graph without
        breaks.

        The meta-adaptation loss stays eager: TorchDynamo does not trace ``torch.autograd.grad`` with
        ``create_graph``, and its ``torch.func.grad`` form compiled but ran ~20x slower than eager here.
        """
        self.backbone.compile()
        self.finetune_critic_loss = compile_fullgraph(self._finetune_critic_loss)
        self.finetune_actor_loss = compile_fullgraph(self._finetune_actor_loss)
        self.density_step_loss = compile_fullgraph(self._density_step_loss)
        self.priorities = compile_fullgraph(self._priorities)

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
                loss_off = td_losses(params, off, y_off, self.config.critic_backend).sum(dim=-1)
                loss_on = td_losses(params, on, y_on, self.config.critic_backend).sum(dim=-1)
                total = loss_off + loss_on
            return {"loss": total, "loss_off": loss_off, "loss_on": loss_on}
        batch = off if off is not None else on
        assert batch is not None
        loss = td_losses(params, batch, td_target(target_params, actor_target, batch, self.online_config),
                         self.config.critic_backend).sum(dim=-1)
        return {"loss": loss}

    def pretrain_update(self, off: Batch | None, on: Batch | None, step: int) -> dict[str, torch.Tensor]:
        """One update of Q_on; pi and Q_off stay frozen. Q_on's targets move every ``policy_delay`` updates."""
        if self.q_on is None:
            raise RuntimeError("online pre-training needs OPT on (config.opt)")
        losses = self.pretrain_losses(off, on)
        delayed = (step + 1) % self.config.policy_delay == 0
        self.backbone.optimize(losses["loss"], [self.q_on_opt], [(self.q_on_target, self.q_on)] if delayed else [],
                               phase_tau(self.config, "pretrain"))
        return {k: v.detach() for k, v in losses.items()}

    # ---------------------------------------------------------------- phase 3: online fine-tuning
    def critics(self) -> list[Critic]:
        return [self.backbone.critic] if self.q_on is None else [self.backbone.critic, self.q_on]

    def target_critics(self) -> list[Critic]:
        targets = [self.backbone.critic_target]
        return targets if self.q_on is None else targets + [self.q_on_target]

    def _density_pair(self, first: Batch, second: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """w on two batches in one call of the density net."""
        w = self.density(torch.cat([first.obs, second.obs], dim=-2), torch.cat([first.action, second.action], dim=-2))
        n_first = first.obs.shape[-2]
        return w[..., :n_first], w[..., n_first:]

    def _density_step_loss(self, off: Batch, on: Batch) -> torch.Tensor:
        return density_ratio_loss(*self._density_pair(off, on))

    def _priorities(self, batch: Batch, off: Batch) -> torch.Tensor:
        with torch.no_grad():  # not a decorator: see opt_fast.agents.common._adam
            return balanced_priorities(*self._density_pair(batch, off), self.config.replay_temperature)

    def _finetune_critic_loss(self, batch: Batch) -> torch.Tensor:
        """TD losses of Q_off and Q_on on the same batch, each with its own targets, as one batched call:
        [(S,) n_critics]."""
        target = td_target(
            stack_params(*self.target_critics()), self.backbone.actor_target, batch, self.online_config
        )
        return td_losses(stack_params(*self.critics()), batch, target, self.config.critic_backend)

    def _finetune_actor_loss(self, obs: torch.Tensor, kappa: torch.Tensor, online_progress: torch.Tensor):
        """The backbone's online actor loss on Q_mix = (1 - kappa) Q_off_1 + kappa Q_on_1 (§3.3); per seed, with
        ``kappa`` and ``online_progress`` scalars or one per seed [S].

        The critics are detached: the actor's loss must not put gradients into them.
        """
        q1_params = first_heads(stack_params(*self.critics()))

        def q_mix(actions: torch.Tensor) -> torch.Tensor:
            q = per_seed(q_values(q1_params, obs, actions, self.config.critic_backend), obs)  # [(S,) Q_off_1 (and Q_on_1), B]
            if self.q_on is None:
                return q.select(-2, 0)
            mix = kappa.unsqueeze(-1)
            return (1.0 - mix) * q.select(-2, 0) + mix * q.select(-2, 1)

        return self.backbone.online_actor_loss(obs, q_mix, online_progress)

    def start_finetuning(self) -> None:
        """The offline-to-online switch: fresh Adam states for the actor and Q_off (§3.3)."""
        self.backbone.reset_optimizers()

    def finetune_update(
        self, off: Batch, on: Batch, batch: Batch, kappa: float | Sequence[float],
        online_progress: float | Sequence[float], step: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One fine-tuning update (§2 phase 3); returns the info and the sampled items' new priorities. ``kappa``
        and ``online_progress`` are numbers, or one per seed for seed-batched agents.

        density-ratio step -> priorities of the prioritised ``batch`` -> TD step of Q_off (and Q_on) ->
        every ``policy_delay`` updates: actor step on the kappa-mixed critic and Polyak update of all targets.
        ``online_progress`` is the fraction of the online budget spent (SPOT cools its density weight with it).
        """
        backbone = self.backbone
        info = {"density_loss": backbone.optimize(self.density_step_loss(off, on), [self.density_opt])}
        new_priorities = self.priorities(batch, off)
        optimizers = [backbone.critic_opt] + ([] if self.q_on is None else [self.q_on_opt])
        critic_losses = backbone.optimize(self.finetune_critic_loss(batch), optimizers)
        info["critic_loss"] = critic_losses[..., 0]
        if self.q_on is not None:
            info["q_on_loss"] = critic_losses[..., 1]
        if (step + 1) % self.config.policy_delay == 0:
            device = batch.obs.device
            actor_loss = self.finetune_actor_loss(
                batch.obs, torch.as_tensor(kappa, dtype=torch.float32, device=device),
                torch.as_tensor(online_progress, dtype=torch.float32, device=device)
            )
            targets = backbone.target_pairs() + ([] if self.q_on is None else [(self.q_on_target, self.q_on)])
            info["actor_loss"] = backbone.optimize(actor_loss, [backbone.actor_opt], targets)
        return info, new_priorities

    # ---------------------------------------------------------------- one seed's view (evaluation)
    def _seed_inputs(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """[B, w] inputs as every seed's [S, B, w] (a view)."""
        return [t.unsqueeze(0).expand(self.n_seeds, *t.shape) for t in tensors]

    def seed_policy(self, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Seed ``index``'s deterministic policy, obs [B, obs] -> actions [B, act]."""
        return lambda obs: self.backbone.act(*self._seed_inputs(obs))[index]

    @torch.no_grad()
    def _seed_q1(self, critic: Critic, index: int, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return critic(*self._seed_inputs(obs, action))[2 * index]

    def seed_critics(self, index: int) -> list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]:
        """Seed ``index``'s Q_off (and Q_on) as named functions Q_1(s, a) -> [B] (value-estimation bias)."""
        named = [("q_off", self.backbone.critic)] + ([] if self.q_on is None else [("q_on", self.q_on)])
        return [(name, functools.partial(self._seed_q1, critic, index)) for name, critic in named]

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

    def seed_state_dicts(self) -> list[dict[str, dict]]:
        """Each seed's networks and optimizer states, in a one-seed agent's format (its checkpoint)."""
        objects: dict[str, nn.Module | torch.optim.Optimizer] = {**self.modules(), **self.optimizers()}
        state = {name: obj.state_dict() for name, obj in objects.items()}
        return split_seeds(state, self.n_seeds)

    def load_backbone_seed_states(self, states: Sequence[dict[str, dict]]) -> None:
        """Load the backbone (actor, Q_off, targets, optimizers) from each seed's full state, leaving the rest as
        it is."""
        self._load({**self.backbone.modules(), **self.backbone.optimizers()}, states)

    def load_seed_state_dicts(self, states: Sequence[dict[str, dict]]) -> None:
        self._load({**self.modules(), **self.optimizers()}, states)

    def _load(self, objects: dict, states: Sequence[dict[str, dict]]) -> None:
        if len(states) != self.n_seeds:
            raise ValueError(f"{len(states)} seeds' states for an agent of {self.n_seeds} seeds")
        for state in states:
            missing = sorted(set(objects) - set(state))
            if missing:
                raise KeyError(f"checkpoint lacks {missing}; it was written by a run with another configuration")
        merged = merge_seeds([{name: state[name] for name in objects} for state in states])
        for name, obj in objects.items():
            obj.load_state_dict(merged[name])


def split_seeds(state: Any, n_seeds: int) -> list[Any]:
    """A seed-batched state (module or optimizer state dicts, nested) as one state per seed: every tensor with an
    ensemble dimension is cut along it (copies, so a seed's checkpoint holds only its own part); scalars (Adam's
    step count, equal for seeds that step together) and settings are the same for every seed."""
    if isinstance(state, dict):
        by_key = {key: split_seeds(value, n_seeds) for key, value in state.items()}
        return [{key: value[i] for key, value in by_key.items()} for i in range(n_seeds)]
    if isinstance(state, list):
        entries = [split_seeds(value, n_seeds) for value in state]
        return [[value[i] for value in entries] for i in range(n_seeds)]
    if isinstance(state, torch.Tensor) and state.dim() > 0:
        return [chunk.clone() for chunk in state.chunk(n_seeds)]
    return [state] * n_seeds


def merge_seeds(states: Sequence[Any]) -> Any:
    """The inverse of :func:`split_seeds`: per-seed states (as one-seed agents write them) as one batched state."""
    first = states[0]
    if isinstance(first, dict):
        return {key: merge_seeds([state[key] for state in states]) for key in first}
    if isinstance(first, list):
        return [merge_seeds(parts) for parts in zip(*states)]
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.cat(list(states)) if len(states) > 1 else first
    return first
