"""Straightforward OPT fine-tuning and TD3+BC, written the way CORL-style single-file code does: the baseline
that opt_fast's training throughput is measured against.

Written from the equations of docs/method.md §3 with the same hyper-parameters (read from
:class:`opt_fast.config.Config`), so it computes the same algorithm, just not fused:

- ``nn.Sequential`` MLPs; every critic is its own module with its own Adam (Q_off as two modules, Q_on as two);
- each twin critic computes its own TD target, with its own target-actor forward pass;
- the density-ratio net runs one forward pass per batch;
- Q_on's meta-adaptation update differentiates through the inner step with ``torch.autograd.grad`` and evaluates
  the adapted critics with ``torch.func.functional_call``, one module at a time;
- the actor's loss backpropagates through the critics as written (their gradients are cleared before their
  next step), as CORL's TD3+BC does;
- priorities live in the numpy sum-tree of ``reference_sumtree.py``; batches are gathered from numpy arrays
  with fancy indexing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import NamedTuple

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from reference_sumtree import NumpySumTree
from torch import nn
from torch.func import functional_call

from opt_fast.config import Config, kappa, online_discount

_LOG_EPS = 1e-10


class Transitions(NamedTuple):
    """A batch as float32 tensors; ``done`` is 1.0 only for true terminations."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...], output: nn.Module | None = None) -> nn.Sequential:
    """Linear-ReLU layers ``in -> hidden... -> out``, then ``output`` (e.g. Tanh) if given."""
    widths = [in_dim, *hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], out_dim))
    if output is not None:
        layers.append(output)
    return nn.Sequential(*layers)


class QNetwork(nn.Module):
    """One Q-function Q(s, a) -> [B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


class DensityRatioNetwork(nn.Module):
    """w(s, a) >= 0 of balanced replay: MLP with a softplus output -> [B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, nn.Softplus())

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, parameter by parameter."""
    with torch.no_grad():
        for target_param, param in zip(target.parameters(), source.parameters(), strict=True):
            target_param.lerp_(param, tau)


class TwinQ:
    """A twin critic (Q_off or Q_on): two Q modules, their target copies and one Adam per module."""

    def __init__(self, obs_dim: int, act_dim: int, config: Config):
        self.config = config
        self.q1 = QNetwork(obs_dim, act_dim, config.hidden)
        self.q2 = QNetwork(obs_dim, act_dim, config.hidden)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        self.reset_optimizers()

    def reset_optimizers(self) -> None:
        self.q1_opt = torch.optim.Adam(self.q1.parameters(), lr=self.config.critic_lr)
        self.q2_opt = torch.optim.Adam(self.q2.parameters(), lr=self.config.critic_lr)

    def update(self, batch: Transitions, actor_target: nn.Module) -> float:
        """One TD step: y = r + gamma (1 - done) min_j Qtarg_j(s', a'), a' from the smoothed target policy."""
        cfg = self.config
        with torch.no_grad():
            noise = (torch.randn_like(batch.action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (actor_target(batch.next_obs) + noise).clamp(-1.0, 1.0)
            next_q = torch.min(self.q1_target(batch.next_obs, next_action), self.q2_target(batch.next_obs, next_action))
            y = batch.reward + cfg.gamma * (1.0 - batch.done) * next_q
        loss = F.mse_loss(self.q1(batch.obs, batch.action), y) + F.mse_loss(self.q2(batch.obs, batch.action), y)
        self.q1_opt.zero_grad()
        self.q2_opt.zero_grad()
        loss.backward()
        self.q1_opt.step()
        self.q2_opt.step()
        return loss.item()

    def update_targets(self) -> None:
        soft_update(self.q1_target, self.q1, self.config.tau)
        soft_update(self.q2_target, self.q2, self.config.tau)


class ReferenceAgent:
    """Actor, Q_off, Q_on and the density-ratio net; TD3+BC offline updates and OPT fine-tuning updates."""

    def __init__(self, obs_dim: int, act_dim: int, config: Config):
        self.config = config
        self.actor = mlp(obs_dim, act_dim, config.hidden, nn.Tanh())
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.q_off = TwinQ(obs_dim, act_dim, config)
        self.q_on = TwinQ(obs_dim, act_dim, config)
        self.density = DensityRatioNetwork(obs_dim, act_dim, config.hidden)
        self.density_opt = torch.optim.Adam(self.density.parameters(), lr=config.density_lr)

    def start_finetuning(self) -> None:
        """Fresh Adam states for the actor and Q_off at the offline-to-online switch (§3.3)."""
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_lr)
        self.q_off.reset_optimizers()

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()

    def _actor_step(self, loss: torch.Tensor) -> float:
        self.actor_opt.zero_grad()
        loss.backward()
        self.actor_opt.step()
        return loss.item()

    def offline_update(self, batch: Transitions, step: int) -> dict[str, float]:
        """TD3+BC (§3.1): critic every step; every ``policy_delay`` steps the BC-regularised actor and targets."""
        cfg = self.config
        info = {"critic_loss": self.q_off.update(batch, self.actor_target)}
        if (step + 1) % cfg.policy_delay == 0:
            pi = self.actor(batch.obs)
            q = self.q_off.q1(batch.obs, pi)
            lam = cfg.bc_alpha / q.abs().mean().detach()
            info["actor_loss"] = self._actor_step(-lam * q.mean() + F.mse_loss(pi, batch.action))
            soft_update(self.actor_target, self.actor, cfg.tau)
            self.q_off.update_targets()
        return info

    def finetune_update(
        self, off: Transitions, on: Transitions, batch: Transitions, kappa_t: float, step: int
    ) -> tuple[dict[str, float], np.ndarray]:
        """One fine-tuning update (§2 phase 3, §3.3); returns the info and the sampled items' new priorities."""
        cfg = self.config
        # Density ratio: E_off[-log(2 / (w + 1))] - E_on[log(2w / (w + 1))].
        w_off = self.density(off.obs, off.action)
        w_on = self.density(on.obs, on.action)
        density_loss = -torch.log(2.0 / (w_off + 1.0) + _LOG_EPS).mean() - torch.log(
            2.0 * w_on / (w_on + 1.0) + _LOG_EPS
        ).mean()
        self.density_opt.zero_grad()
        density_loss.backward()
        self.density_opt.step()
        info = {"density_loss": density_loss.item()}
        # New priorities w^(1/T) / mean_offline(w^(1/T)), clipped to [1e-3, 1e3], with the updated net.
        with torch.no_grad():
            w_batch = self.density(batch.obs, batch.action).pow(1.0 / cfg.replay_temperature)
            w_norm = self.density(off.obs, off.action).pow(1.0 / cfg.replay_temperature).mean()
            priorities = (w_batch / w_norm).clamp(1e-3, 1e3).numpy().astype(np.float64)
        info["critic_loss"] = self.q_off.update(batch, self.actor_target)
        info["q_on_loss"] = self.q_on.update(batch, self.actor_target)
        if (step + 1) % cfg.policy_delay == 0:
            pi = self.actor(batch.obs)
            q_mix = (1.0 - kappa_t) * self.q_off.q1(batch.obs, pi) + kappa_t * self.q_on.q1(batch.obs, pi)
            info["actor_loss"] = self._actor_step(-q_mix.mean())
            soft_update(self.actor_target, self.actor, cfg.tau)
            self.q_off.update_targets()
            self.q_on.update_targets()
        return info, priorities


    def pretrain_update(self, off: Transitions, on: Transitions, step: int) -> dict[str, float]:
        """One meta-adaptation update of Q_on (§3.2), actor and Q_off frozen: L_off(psi) + w L_on(psi'), psi' = psi -
        alpha grad L_off(psi) (differentiated through), w = sg(min(L_off, L_on) / L_on) or 1; Q_on's targets move
        every ``policy_delay`` updates."""
        cfg, q_on = self.config, self.q_on
        gamma = online_discount(cfg)

        def td_target(batch: Transitions) -> torch.Tensor:
            with torch.no_grad():
                noise = (torch.randn_like(batch.action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
                next_action = (self.actor_target(batch.next_obs) + noise).clamp(-1.0, 1.0)
                next_q = torch.min(q_on.q1_target(batch.next_obs, next_action),
                                   q_on.q2_target(batch.next_obs, next_action))
                return batch.reward + gamma * (1.0 - batch.done) * next_q

        y_off, y_on = td_target(off), td_target(on)
        nets = (q_on.q1, q_on.q2)
        params = [dict(net.named_parameters()) for net in nets]
        loss_off = sum(F.mse_loss(net(off.obs, off.action), y_off) for net in nets)
        grads = iter(torch.autograd.grad(loss_off, [p for named in params for p in named.values()], create_graph=True))
        adapted = [{name: p - cfg.meta_inner_lr * next(grads) for name, p in named.items()} for named in params]
        loss_on = sum(F.mse_loss(functional_call(net, weights, (on.obs, on.action)), y_on)
                      for net, weights in zip(nets, adapted, strict=True))
        weight = (torch.minimum(loss_off, loss_on) / loss_on).detach() if cfg.meta_loss_weight == "ratio" else 1.0
        loss = loss_off + weight * loss_on
        q_on.q1_opt.zero_grad()
        q_on.q2_opt.zero_grad()
        loss.backward()
        q_on.q1_opt.step()
        q_on.q2_opt.step()
        if (step + 1) % cfg.policy_delay == 0:
            q_on.update_targets()
        return {"loss": loss.item(), "loss_off": loss_off.item(), "loss_on": loss_on.item()}


class NumpyReplay:
    """Preallocated numpy arrays, gathered with fancy indexing; with ``prioritized``, a numpy sum-tree of
    priorities where new rows enter at the largest priority set so far."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, prioritized: bool = False):
        if capacity < 1:
            raise ValueError(f"NumpyReplay capacity must be >= 1, got {capacity}")
        self.capacity, self.size = capacity, 0
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, act_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.done = np.zeros(capacity, dtype=np.float32)
        self.tree = NumpySumTree(capacity) if prioritized else None
        self.max_priority = 1.0

    def load_dataset(self, data: Mapping[str, np.ndarray]) -> None:
        """Fill an empty buffer with a D4RL ``qlearning_dataset`` dict, every row at priority 1."""
        missing = [k for k in ("observations", "actions", "rewards", "next_observations", "terminals") if k not in data]
        if missing:
            raise KeyError(f"dataset lacks keys {missing}; expected D4RL qlearning_dataset arrays")
        n = len(data["rewards"])
        if self.size != 0 or n > self.capacity:
            raise ValueError(f"load_dataset needs an empty buffer of capacity >= {n}, got size {self.size}, "
                             f"capacity {self.capacity}")
        self.obs[:n] = data["observations"]
        self.action[:n] = data["actions"]
        self.reward[:n] = data["rewards"]
        self.next_obs[:n] = data["next_observations"]
        self.done[:n] = data["terminals"]
        self.size = n
        if self.tree is not None:
            self.tree.fill(np.ones(n))

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, done: bool) -> None:
        if self.size == self.capacity:
            raise ValueError(f"NumpyReplay is full ({self.capacity} rows)")
        i = self.size
        self.obs[i], self.action[i], self.next_obs[i] = obs, action, next_obs
        self.reward[i], self.done[i] = reward, done
        self.size += 1
        if self.tree is not None:
            self.tree.update(np.array([i]), np.array([self.max_priority]))

    def sample_uniform(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.size, size=batch_size)

    def sample_prioritized(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if self.tree is None:
            raise ValueError("sample_prioritized needs a buffer created with prioritized=True")
        return self.tree.sample_stratified(batch_size, rng)

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        if self.tree is None:
            raise ValueError("update_priorities needs a buffer created with prioritized=True")
        self.tree.update(indices, priorities)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def batch(self, indices: np.ndarray) -> Transitions:
        return Transitions(*(torch.from_numpy(a[indices]) for a in (self.obs, self.action, self.reward,
                                                                      self.next_obs, self.done)))


class ReferenceFinetuner:
    """The online fine-tuning loop (§2 phase 3): one env step with exploration noise stored in B_on and the
    balanced replay, then ``utd`` updates, each on a uniform offline batch, a uniform online batch and a
    prioritised batch whose priorities it then rewrites."""

    def __init__(self, config: Config, env: gymnasium.Env, data: Mapping[str, np.ndarray], seed: int = 0):
        self.config = config
        self.env = env
        obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
        self.agent = ReferenceAgent(obs_dim, act_dim, config)
        self.agent.start_finetuning()
        n_off = len(data["rewards"])
        self.offline = NumpyReplay(n_off, obs_dim, act_dim)
        self.offline.load_dataset(data)
        self.online = NumpyReplay(config.online_steps, obs_dim, act_dim)
        self.balanced = NumpyReplay(n_off + config.online_steps, obs_dim, act_dim, prioritized=True)
        self.balanced.load_dataset(data)
        self.rng = np.random.default_rng(seed)
        self.obs, _ = env.reset(seed=seed)
        self.online_step = 0
        self.update_step = 0

    def env_step(self) -> None:
        cfg = self.config
        action = self.agent.act(self.obs)
        action = np.clip(action + self.rng.normal(0.0, cfg.exploration_noise, size=action.shape), -1.0, 1.0)
        next_obs, reward, terminated, truncated, _ = self.env.step(action.astype(np.float32))
        # `done` is a true termination only; a time-limit cut bootstraps.
        for buffer in (self.online, self.balanced):
            buffer.add(self.obs, action, float(reward), next_obs, bool(terminated))
        self.online_step += 1
        self.obs = self.env.reset()[0] if terminated or truncated else next_obs

    def update(self) -> dict[str, float]:
        cfg = self.config
        off = self.offline.batch(self.offline.sample_uniform(cfg.batch_size, self.rng))
        on = self.online.batch(self.online.sample_uniform(cfg.batch_size, self.rng))
        indices = self.balanced.sample_prioritized(cfg.batch_size, self.rng)
        info, priorities = self.agent.finetune_update(
            off, on, self.balanced.batch(indices), kappa(cfg, self.online_step), self.update_step
        )
        self.balanced.update_priorities(indices, priorities)
        self.update_step += 1
        return info

    def step(self) -> None:
        """One env step, then ``utd`` updates once B_on holds a batch."""
        self.env_step()
        if self.online.size >= self.config.batch_size:
            for _ in range(self.config.utd):
                self.update()
