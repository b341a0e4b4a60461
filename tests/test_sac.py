import io
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from opt_fast.agents.sac import SAC, ReplayBuffer, SACConfig, TanhGaussianActor
from opt_fast.agents.common import Batch

LR = 3e-4


def _set_constant_outputs(mlp, last_bias) -> None:
    """Zero every weight and bias but the last bias: the MLP then outputs ``last_bias`` for any input."""
    with torch.no_grad():
        for weight, bias in zip(mlp.weights, mlp.biases):
            weight.zero_()
            bias.zero_()
        mlp.biases[-1].copy_(torch.tensor(last_bias, dtype=torch.float32).reshape(mlp.biases[-1].shape))


def _tanh_gaussian_log_prob(u: np.ndarray, eps: np.ndarray, log_std: float) -> np.ndarray:
    """log N(u; mu, sigma) - log(1 - tanh(u)^2), written out in float64."""
    return -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi) - np.log(1.0 - np.tanh(u) ** 2)


def test_log_prob_matches_torch_tanh_normal():
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 3, hidden=(16,))
    obs = torch.randn(64, 4)
    action, log_prob = actor(obs, torch.Generator().manual_seed(1))
    mean, log_std = actor.net(obs).squeeze(0).chunk(2, dim=-1)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform()).log_prob(action).sum(-1)
    torch.testing.assert_close(log_prob, reference, atol=1e-4, rtol=1e-4)
    assert action.abs().max() < 1.0


def test_update_matches_hand_computed_sac_equations():
    mu, log_std, alpha, gamma, tau = 0.5, -1.0, 0.2, 0.9, 0.005
    config = SACConfig(hidden=(3,), gamma=gamma, tau=tau, init_alpha=alpha)
    agent = SAC(obs_dim=1, act_dim=1, config=config, seed=7)
    _set_constant_outputs(agent.actor.net, [[mu, log_std]])
    _set_constant_outputs(agent.critic, [1.0, 2.0])  # Q_1 = 1, Q_2 = 2 everywhere
    _set_constant_outputs(agent.critic_target, [3.0, 0.5])  # min_j Qtarg_j = 0.5 everywhere
    reward, done = np.array([1.0, -0.5]), np.array([0.0, 1.0])
    batch = Batch(
        obs=torch.tensor([[0.3], [-0.2]]),
        action=torch.tensor([[0.1], [-0.4]]),
        reward=torch.tensor(reward, dtype=torch.float32),
        next_obs=torch.tensor([[0.7], [0.0]]),
        done=torch.tensor(done, dtype=torch.float32),
    )
    noise = torch.Generator().manual_seed(7)  # the agent's generator: a' noise first, then the actor's sample
    eps_next = torch.randn((2, 1), generator=noise).double().numpy()[:, 0]
    eps = torch.randn((2, 1), generator=noise).double().numpy()[:, 0]

    info = agent.update(batch)

    std = math.exp(log_std)
    u_next = mu + std * eps_next
    log_prob_next = _tanh_gaussian_log_prob(u_next, eps_next, log_std)
    y = reward + gamma * (1 - done) * (0.5 - alpha * log_prob_next)
    assert info["critic_loss"] == pytest.approx(np.mean((1.0 - y) ** 2) + np.mean((2.0 - y) ** 2), rel=1e-5)
    # Adam's first step moves every parameter by lr against the sign of its gradient.
    q1 = 1.0 - LR * np.sign(np.mean(1.0 - y))
    q2 = 2.0 - LR * np.sign(np.mean(2.0 - y))
    new_q = agent.critic.biases[-1].detach().double().numpy().ravel()
    np.testing.assert_allclose(new_q, [q1, q2], rtol=0, atol=1e-6)

    log_prob = _tanh_gaussian_log_prob(mu + std * eps, eps, log_std)
    assert info["actor_loss"] == pytest.approx(np.mean(alpha * log_prob - min(q1, q2)), rel=1e-5)
    assert info["q"] == pytest.approx(min(q1, q2), rel=1e-6)
    assert info["entropy"] == pytest.approx(-np.mean(log_prob), rel=1e-5)
    target_entropy = -1.0
    assert info["alpha_loss"] == pytest.approx(-alpha * np.mean(log_prob + target_entropy), rel=1e-5)
    alpha_grad = -alpha * np.mean(log_prob + target_entropy)
    assert agent.alpha == pytest.approx(math.exp(math.log(alpha) - LR * np.sign(alpha_grad)), rel=1e-6)
    np.testing.assert_allclose(
        agent.critic_target.biases[-1].detach().double().numpy().ravel(),
        [(1 - tau) * 3.0 + tau * q1, (1 - tau) * 0.5 + tau * q2],
        atol=1e-6,
    )


def _random_batch(rng: np.random.Generator, n: int, obs_dim: int, act_dim: int) -> Batch:
    return Batch.from_numpy(
        {
            "obs": rng.standard_normal((n, obs_dim), dtype=np.float32),
            "action": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "reward": rng.standard_normal(n, dtype=np.float32),
            "next_obs": rng.standard_normal((n, obs_dim), dtype=np.float32),
            "done": (rng.random(n) < 0.1).astype(np.float32),
        },
        "cpu",
    )


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    config = SACConfig(hidden=(32, 32))
    agent = SAC(5, 2, config, seed=1)
    for _ in range(3):
        agent.update(_random_batch(rng, 16, 5, 2))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    restored = SAC(5, 2, config, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    batch = _random_batch(rng, 16, 5, 2)
    assert agent.update(batch) == restored.update(batch)
    for a, b in zip(agent.state_dict()["actor"].values(), restored.state_dict()["actor"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    obs = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs), restored.act(obs))
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), restored.act(obs, deterministic=True))


def test_same_seed_same_init_and_actions():
    obs = np.ones((3, 4), dtype=np.float32)
    a, b, c = SAC(4, 2, seed=5), SAC(4, 2, seed=5), SAC(4, 2, seed=6)
    np.testing.assert_array_equal(a.act(obs), b.act(obs))
    assert not np.array_equal(a.act(obs, deterministic=True), c.act(obs, deterministic=True))
    assert a.act(obs).shape == (3, 2) and a.act(obs[0]).shape == (2,)


def test_replay_ring_sampling_and_state():
    replay = ReplayBuffer(3, obs_dim=1, act_dim=1, seed=0)
    with pytest.raises(ValueError, match="empty"):
        replay.sample(1)
    for i in range(5):
        replay.add(np.array([i]), np.array([-i]), float(i), np.array([i + 1]), i == 4)
    assert len(replay) == 3
    np.testing.assert_array_equal(replay.obs[:, 0], [3, 4, 2])  # rows 0 and 1 overwritten by transitions 3, 4
    np.testing.assert_array_equal(replay.done, [0, 1, 0])
    batch = replay.sample(200)
    assert set(batch["obs"][:, 0]) == {2.0, 3.0, 4.0}
    np.testing.assert_array_equal(batch["next_obs"], batch["obs"] + 1)
    np.testing.assert_array_equal(batch["action"], -batch["obs"])

    copy = ReplayBuffer(3, 1, 1, seed=123)
    copy.load_state_dict(replay.state_dict())
    expected, restored = replay.sample(10), copy.sample(10)
    for key, value in expected.items():
        np.testing.assert_array_equal(value, restored[key])
    with pytest.raises(ValueError, match="capacity 2"):
        ReplayBuffer(2, 1, 1).load_state_dict(replay.state_dict())


def _bandit_reward(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """One-step task: the best action is 0.8 * s."""
    return -((action - 0.8 * obs) ** 2).sum(-1)


def test_sac_learns_one_step_task():
    """Each episode is one step (done = 1): SAC must learn Q = r and move tanh(mu(s)) to 0.8 s."""
    rng = np.random.default_rng(0)
    agent = SAC(1, 1, SACConfig(hidden=(32, 32), batch_size=64, init_alpha=0.1), seed=0)
    test_obs = np.linspace(-1, 1, 101, dtype=np.float32)[:, None]
    before = _bandit_reward(test_obs, agent.act(test_obs, deterministic=True)).mean()
    replay = ReplayBuffer(10_000, 1, 1, seed=0)
    for step in range(1000):
        obs = rng.uniform(-1, 1, 1).astype(np.float32)
        action = agent.act(obs)
        replay.add(obs, action, float(_bandit_reward(obs, action)), obs, True)
        if step >= 100:
            agent.update(Batch.from_numpy(replay.sample(64), "cpu"))
    after = _bandit_reward(test_obs, agent.act(test_obs, deterministic=True)).mean()
    assert before < -0.2  # the initial policy outputs about 0 for every s
    assert after > -0.01, (before, after)
