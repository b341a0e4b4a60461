"""Evaluation of the deterministic policy (docs/method.md §5) and the value-estimation bias of the critics (§8)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


Critics = Sequence[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]
"""Named functions Q_1(s, a) -> [B] whose value-estimation bias an evaluation measures."""


@dataclass
class Episode:
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: bool = False


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of evaluation episode ``episode`` of a run of ``seed``."""
    return EVAL_SEED_OFFSET + seed * 1000 + episode


@torch.no_grad()
def evaluate(
    policy: Callable[[torch.Tensor], torch.Tensor],
    env: gymnasium.Env,
    episodes: int,
    seed: int,
    critics: Critics = (),
    gamma: float = 0.99,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Roll out the deterministic policy for ``episodes`` episodes of a separately seeded env; see :func:`summarize`."""
    rollouts = []
    for index in range(episodes):
        obs, _ = env.reset(seed=episode_seed(seed, index))
        episode = Episode()
        truncated = False
        while not (episode.terminated or truncated):
            action = policy(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))[0].cpu().numpy()
            episode.observations.append(obs)
            episode.actions.append(action)
            obs, reward, episode.terminated, truncated, _ = env.step(action)
            episode.rewards.append(float(reward))
        rollouts.append(episode)
    return summarize(rollouts, critics, gamma, device)


@torch.no_grad()
def evaluate_seed_batch(
    policy: Callable[[torch.Tensor], torch.Tensor],
    envs,
    seeds: Sequence[int],
    episodes: int,
    device: torch.device | str = "cpu",
) -> list[list[Episode]]:
    """Every seed's ``episodes`` evaluation episodes at once on one batch of envs (``MJXSeedEnvs`` of S x episodes
    rows), each row reset with the seed :func:`evaluate` gives that episode; ``policy`` maps obs [S, episodes, obs]
    to actions [S, episodes, act] (a seed-batched actor). Returns each seed's episodes for :func:`summarize`."""
    n_seeds = len(seeds)
    obs = np.stack(envs.reset([episode_seed(seed, i) for seed in seeds for i in range(episodes)]))
    rollouts = [Episode() for _ in range(n_seeds * episodes)]
    running = np.ones(len(rollouts), dtype=bool)
    while running.any():
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).view(n_seeds, episodes, -1)
        actions = policy(obs_t).reshape(n_seeds * episodes, -1).cpu().numpy()
        results = envs.step(actions)
        for row in np.flatnonzero(running):
            next_obs, reward, terminated, truncated = results[row]
            episode = rollouts[row]
            episode.observations.append(obs[row])
            episode.actions.append(actions[row])
            episode.rewards.append(reward)
            if terminated or truncated:
                episode.terminated = terminated
                running[row] = False
        # A row whose episode ended runs on (auto-reset) until every row has ended; its later steps are not kept.
        obs = np.stack([result[0] for result in results])
    return [rollouts[s * episodes:(s + 1) * episodes] for s in range(n_seeds)]


def summarize(rollouts: Sequence[Episode], critics: Critics = (), gamma: float = 0.99,
              device: torch.device | str = "cpu") -> dict[str, float]:
    """The mean/std return of the episodes and, for each named critic, the mean Q_1(s_t, a_t) over the visited steps
    with a reliable Monte-Carlo return, next to the mean of those returns (``<name>_q``, ``mc_return``,
    ``<name>_bias``)."""
    episode_returns: list[float] = []
    all_obs: list[np.ndarray] = []
    all_actions: list[np.ndarray] = []
    all_mc: list[np.ndarray] = []
    for episode in rollouts:
        episode_returns.append(float(np.sum(episode.rewards)))
        keep = reliable_prefix(len(episode.rewards), episode.terminated, gamma)
        all_obs.extend(episode.observations[:keep])
        all_actions.extend(episode.actions[:keep])
        all_mc.extend(discounted_returns(np.asarray(episode.rewards), gamma)[:keep])
    result = {"return_mean": float(np.mean(episode_returns)), "return_std": float(np.std(episode_returns)),
              "episodes": float(len(rollouts))}
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
