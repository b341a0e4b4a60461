"""Soft actor-critic with automatic entropy tuning (Haarnoja et al., 2018, "Soft Actor-Critic Algorithms and
Applications"): the algorithm D4RL's MuJoCo datasets came from, used by
:mod:`opt_fast.datagen.mujoco` to regenerate them.

Tanh-Gaussian actor and twin critics, MLP 256-256 ReLU; lr 3e-4, batch 256, gamma 0.99, tau 0.005, target
entropy -act_dim. All randomness (network init, action noise, replay sampling) comes from seeded generators that
the state dicts carry, so a run restored from a checkpoint continues exactly as the uninterrupted one.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opt_fast.agents.common import Batch, optimize
from opt_fast.agents.td3 import detached, td_losses
from opt_fast.networks import Critic, EnsembleMLP, adam, q_values

# Log-std range of the Gaussian before the tanh: the usual SAC choice (e.g. rlkit's TanhGaussianPolicy).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class SACConfig:
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    """Learning rate of log(alpha), the entropy temperature."""
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak rate of the target critics, applied after every update."""
    init_alpha: float = 1.0
    target_entropy: float | None = None
    """Entropy the temperature tunes the policy towards; None means -act_dim."""
    device: str = "cpu"


class TanhGaussianActor(nn.Module):
    """pi(a|s): u ~ N(mu(s), sigma(s)^2), a = tanh(u); one MLP outputs mu and log sigma."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.act_dim = act_dim
        self.net = EnsembleMLP(1, obs_dim, 2 * act_dim, hidden)

    def forward(
        self, obs: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(action [B, act], log pi(action|s) [B]); the sample is reparameterised, so gradients reach mu, sigma.
        ``deterministic`` returns tanh(mu) and its log-density."""
        mean, log_std = self.net(obs).squeeze(0).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            eps = torch.zeros_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        gaussian_log_prob = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        # Change of variables through tanh: log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
        log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), gaussian_log_prob - log_det

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Numpy in and out: ``obs`` [obs] or [B, obs] -> (float32 action(s), float32 log-probability(ies))."""
        device = next(self.parameters()).device
        batch = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
        action, log_prob = self(batch.reshape(-1, batch.shape[-1]), generator, deterministic)
        action_np, log_prob_np = action.cpu().numpy(), log_prob.cpu().numpy()
        if batch.dim() == 1:
            return action_np[0], log_prob_np[0]
        return action_np, log_prob_np


class SAC:
    """Actor, twin critics, their targets, the temperature alpha, and their Adam optimizers."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig | None = None, seed: int = 0):
        self.config = config or SACConfig()
        self.device = torch.device(self.config.device)
        self.target_entropy = (
            -float(act_dim) if self.config.target_entropy is None else float(self.config.target_entropy)
        )
        # Initialise from the seed without disturbing the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = TanhGaussianActor(obs_dim, act_dim, self.config.hidden).to(self.device)
            self.critic = Critic(obs_dim, act_dim, n_heads=2, hidden=self.config.hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.config.init_alpha), device=self.device))
        self.actor_opt = adam(self.actor.parameters(), self.config.actor_lr)
        self.critic_opt = adam(self.critic.parameters(), self.config.critic_lr)
        self.alpha_opt = adam([self.log_alpha], self.config.alpha_lr)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        """Action noise of :meth:`act` and :meth:`update`."""

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) for numpy observation(s): sampled from pi(.|s), or tanh(mu(s)) when ``deterministic``."""
        return self.actor.act(obs, deterministic, self.generator)[0]

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of the critics, then the actor, then alpha; Polyak update of the target critics."""
        alpha = self.log_alpha.exp().detach()
        # Critic: y = r + gamma (1 - d) (min_j Qtarg_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s').
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch.next_obs, self.generator)
            next_q = self.critic_target(batch.next_obs, next_action).amin(dim=0)
            target = batch.reward + self.config.gamma * (1.0 - batch.done) * (next_q - alpha * next_log_prob)
        critic_loss = optimize(td_losses(self.critic.layer_params(), batch, target.unsqueeze(0)).sum(),
                               [self.critic_opt])
        # Actor: E_s E_{a ~ pi}[alpha log pi(a|s) - min_j Q_j(s, a)], reparameterised, critics held fixed.
        action, log_prob = self.actor(batch.obs, self.generator)
        q_pi = q_values(detached(self.critic.layer_params()), batch.obs, action).amin(dim=0)
        actor_loss = optimize((alpha * log_prob - q_pi).mean(), [self.actor_opt])
        # Temperature: J(alpha) = E[-alpha (log pi(a|s) + target_entropy)].
        alpha_loss = optimize(-(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean(),
                              [self.alpha_opt], polyak=[(self.critic_target, self.critic)], tau=self.config.tau)
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),
            "alpha_loss": alpha_loss.item(),
            "alpha": float(alpha),
            "entropy": -log_prob.detach().mean().item(),
            "q": q_pi.detach().mean().item(),
        }

    def state_dict(self) -> dict:
        """Networks, optimizers, temperature and the noise generator: everything :meth:`update` depends on."""
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.generator.set_state(state["generator"])


class ReplayBuffer:
    """The last ``capacity`` transitions in numpy arrays (a ring), sampled uniformly with replacement.

    ``done`` is 1.0 only for true terminations. Rows ``[0, len(self))`` are in insertion order until the ring
    wraps.
    """

    _FIELDS = ("obs", "action", "reward", "next_obs", "done")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, act_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.done = np.zeros(capacity, dtype=np.float32)
        self.position = 0  # next row to write
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, done: bool) -> None:
        i = self.position
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.done[i] = next_obs, done
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` rows drawn uniformly: ``obs, action, reward, next_obs, done`` (see ``Batch.from_numpy``)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        idx = torch.randint(self.size, (batch_size,), generator=self.generator).numpy()
        return {name: getattr(self, name)[idx] for name in self._FIELDS}

    def state_dict(self) -> dict:
        """The filled rows as tensors (sharing memory with the arrays), the write position and the sampler."""
        state: dict = {name: torch.from_numpy(getattr(self, name)[: self.size]) for name in self._FIELDS}
        state.update(position=self.position, size=self.size, generator=self.generator.get_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(f"ReplayBuffer state holds {size} rows, more than the capacity {self.capacity}")
        for name in self._FIELDS:
            getattr(self, name)[:size] = state[name].numpy()
        self.position, self.size = int(state["position"]), size
        self.generator.set_state(state["generator"])
