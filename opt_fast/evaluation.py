"""Evaluation of the deterministic policy (OPT.md §5) and the value-estimation bias of the critics (§8)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import gymnasium
import numpy as np
import torch


# Seeds of evaluation episodes live far from training seeds, so the eval env never replays a training episode.
EVAL_SEED_OFFSET = 1_000_003


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_{t+k} to the end of the episode."""
    returns = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def reliable_prefix(length: int, terminated: bool, gamma: float, tolerance: float = 0.01) -> int:
    """How many leading steps of an episode have a Monte-Carlo return that is nearly the infinite-horizon one.

    A terminated episode's returns are exact. A truncated episode misses its tail: keep the steps with at least
    ``log(tolerance) / log(gamma)`` steps after them (gamma^k < tolerance), 459 steps for gamma = 0.99.
    """
    if terminated:
        return length
    needed = math.ceil(math.log(tolerance) / math.log(gamma))
    return max(length - needed, 0)


@torch.no_grad()
def evaluate(
    policy: Callable[[torch.Tensor], torch.Tensor],
    env: gymnasium.Env,
    episodes: int,
    seed: int,
    critics: Sequence[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = (),
    gamma: float = 0.99,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Roll out the deterministic policy for ``episodes`` episodes of a separately seeded env.

    ``critics`` are named functions Q_1(s, a) -> [B]. Returns the mean/std return and, for each named critic, the
    mean Q_1(s_t, a_t) over the visited steps with a
    reliable Monte-Carlo return, next to the mean of those returns (``<name>_q``, ``mc_return``, ``<name>_bias``).
    """
    episode_returns, all_obs, all_actions, all_mc = [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_OFFSET + seed * 1000 + episode)
        observations, actions, rewards = [], [], []
        terminated = truncated = False
        while not (terminated or truncated):
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
            action = policy(obs_t.unsqueeze(0))[0].cpu().numpy()
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
        episode_returns.append(float(np.sum(rewards)))
        keep = reliable_prefix(len(rewards), terminated, gamma)
        all_obs.extend(observations[:keep])
        all_actions.extend(actions[:keep])
        all_mc.extend(discounted_returns(np.asarray(rewards), gamma)[:keep])
    result = {"return_mean": float(np.mean(episode_returns)), "return_std": float(np.std(episode_returns)),
              "episodes": float(episodes)}
    if critics and all_obs:
        obs_t = torch.as_tensor(np.asarray(all_obs), dtype=torch.float32, device=device)
        act_t = torch.as_tensor(np.asarray(all_actions), dtype=torch.float32, device=device)
        mc = float(np.mean(all_mc))
        result["mc_return"] = mc
        for name, critic in critics:
            q = float(critic(obs_t, act_t).mean())
            result[f"{name}_q"] = q
            result[f"{name}_bias"] = q - mc
    return result
