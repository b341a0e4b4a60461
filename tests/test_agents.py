"""TD3 / TD3+BC / OPT losses against hand-computed values, and the meta-gradient against finite differences."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from opt_fast.agents.opt import OPTAgent, balanced_priorities, density_ratio_loss, meta_adaptation_loss
from opt_fast.agents.common import Batch
from opt_fast.agents.td3 import td3_bc_actor_loss, td_losses, td_target
from opt_fast.config import Config, first_update_step, kappa, kappa_ramp_steps, phase_tau, resolve
from opt_fast.networks import Critic, DeterministicActor, EnsembleMLP, stack_params


def _set(net, weights, biases):
    """Overwrite an EnsembleMLP's layer weights and biases with the given nested lists."""
    with torch.no_grad():
        for p, v in zip([*net.weights, *net.biases], [*weights, *biases]):
            p.copy_(torch.tensor(v, dtype=p.dtype).reshape(p.shape))


def tiny_critic(scales):
    """Q_j(s, a) = c_j * relu(s + a): obs 1, action 1, hidden 1."""
    critic = Critic(1, 1, n_heads=len(scales), hidden=(1,))
    e = len(scales)
    _set(critic, weights=[[[1.0], [1.0]] * e, [[c] for c in scales]], biases=[[0.0] * e, [0.0] * e])
    return critic


def tiny_actor():
    """pi(s) = tanh(relu(s))."""
    actor = DeterministicActor(1, 1, hidden=(1,))
    _set(actor.net, weights=[[1.0], [1.0]], biases=[[0.0], [0.0]])
    return actor


def batch(obs, action, reward, next_obs, done):
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return Batch(t(obs).reshape(-1, 1), t(action).reshape(-1, 1), t(reward), t(next_obs).reshape(-1, 1), t(done))


B = batch(obs=[0.5, 1.0, 2.0], action=[0.2, -0.3, 0.5], reward=[1.0, -0.5, 2.0], next_obs=[1.0, 0.1, 3.0],
          done=[0.0, 0.0, 1.0])


def test_td_target_and_loss_match_hand_computation():
    config = Config(policy_noise=0.0, gamma=0.9)
    target = td_target(tiny_critic([2.0, 3.0]).layer_params(), tiny_actor(), B, config)
    next_a = np.tanh(np.maximum([1.0, 0.1, 3.0], 0))
    q_next = np.minimum(2.0, 3.0) * np.maximum(np.array([1.0, 0.1, 3.0]) + next_a, 0)
    y = np.array([1.0, -0.5, 2.0]) + 0.9 * (1 - np.array([0, 0, 1.0])) * q_next
    np.testing.assert_allclose(target.numpy()[0], y, rtol=1e-6)

    critic = tiny_critic([1.5, 0.5])
    q_sa = np.maximum(np.array([0.5, 1.0, 2.0]) + np.array([0.2, -0.3, 0.5]), 0)
    expected = np.mean((1.5 * q_sa - y) ** 2) + np.mean((0.5 * q_sa - y) ** 2)
    np.testing.assert_allclose(td_losses(critic.layer_params(), B, target).item(), expected, rtol=1e-6)


def test_td_target_noise_is_clipped_and_actions_bounded():
    config = Config(policy_noise=10.0, noise_clip=0.5)
    obs = torch.zeros(4000, 1)
    b = Batch(obs, obs, torch.zeros(4000), obs, torch.zeros(4000))
    critic = Critic(1, 1, hidden=(1,))
    _set(critic, weights=[[[0.0], [1.0]] * 2, [[1.0]] * 2], biases=[[0.0] * 2, [0.0] * 2])  # Q = relu(a)
    # pi(0) = 0, so a' is the clipped noise and y = gamma * relu(a')
    next_action = td_target(critic.layer_params(), tiny_actor(), b, config)[0] / config.gamma
    assert next_action.max().item() == pytest.approx(0.5)
    clipped = torch.isclose(next_action, torch.tensor(0.5)).float().mean().item()
    assert 0.45 < clipped < 0.55  # noise of std 10 is clipped at +0.5 about half of the time


def test_td3_bc_actor_loss_hand_value_and_detached_lambda():
    critic = tiny_critic([2.0, 3.0])
    actor = tiny_actor()
    loss = td3_bc_actor_loss(actor, critic.layer_params(), B, alpha=2.5)
    s = np.array([0.5, 1.0, 2.0])
    pi = np.tanh(s)
    q = 2.0 * np.maximum(s + pi, 0)
    lam = 2.5 / np.abs(q).mean()
    expected = -lam * q.mean() + np.mean((pi - np.array([0.2, -0.3, 0.5])) ** 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in critic.parameters()), "the actor loss must not train the critic"
    # d/dw2 with lam held constant: pi = tanh(w2 * relu(w1 s)), dpi/dw2 = (1 - pi^2) s
    dpi = (1 - pi**2) * s
    grad_w2 = np.mean(-lam * 2.0 * dpi) + np.mean(2 * (pi - np.array([0.2, -0.3, 0.5])) * dpi)
    assert actor.net.weights[1].grad.item() == pytest.approx(grad_w2, rel=1e-5)


def test_online_actor_loss_follows_the_kappa_mixed_critic():
    agent = OPTAgent(1, 1, Config(hidden=(1,)))
    agent.backbone.actor = tiny_actor()
    agent.backbone.critic, agent.q_on = tiny_critic([2.0, 9.0]), tiny_critic([4.0, 9.0])
    s = np.array([0.5, 1.0, 2.0])
    base = np.maximum(s + np.tanh(s), 0)
    for k in (0.0, 0.3, 1.0):
        expected = -np.mean((1 - k) * 2.0 * base + k * 4.0 * base)
        loss = agent.finetune_actor_loss(B.obs, torch.tensor(k), torch.tensor(0.0))
        assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(p.grad is None for c in agent.critics() for p in c.parameters())
    baseline = OPTAgent(1, 1, Config(hidden=(1,), opt=False))
    baseline.backbone.actor, baseline.backbone.critic = tiny_actor(), tiny_critic([2.0, 9.0])
    loss = baseline.finetune_actor_loss(B.obs, torch.tensor(0.7), torch.tensor(0.0))
    assert loss.item() == pytest.approx(-np.mean(2.0 * base), rel=1e-6)  # no Q_on: kappa has no effect


def test_kappa_schedule_values():
    c = Config(n_tau=25_000, kappa_start=0.1, kappa_end=0.9)  # the paper's 150k of 275k fine-tuning steps
    assert kappa_ramp_steps(c) == 150_000
    assert [round(kappa(c, t), 6) for t in (0, 25_000, 100_000, 175_000, 300_000)] == [0.1, 0.1, 0.5, 0.9, 0.9]
    absolute = dataclasses.replace(c, kappa_ramp_from="zero")
    assert kappa(absolute, 75_000) == pytest.approx(0.5)
    paper = resolve(Config(budget="paper"), {}, "medium")
    assert (paper.kappa_start, paper.kappa_end, kappa_ramp_steps(paper)) == (0.3, 0.9, 150_000)
    random = resolve(Config(budget="paper"), {}, "random")
    assert kappa(random, 25_000) == kappa(random, 299_999) == 1.0
    # A smaller budget keeps the ramp's share of fine-tuning: 150k of 275k.
    quick = resolve(Config(budget="quick"), {}, "medium-replay")
    assert kappa_ramp_steps(quick) == round(150_000 * (quick.online_steps - quick.n_tau) / 275_000)


@pytest.mark.parametrize("budget", ["cpu", "smoke"])
def test_kappa_ramp_starts_at_the_first_update_when_n_tau_is_below_one_batch(budget):
    """N_tau < 256: fine-tuning updates start when B_on holds one batch, and so does the ramp (the paper's first
    update uses kappa_start); before the fix kappa was already 0.67-1.0 there."""
    config = resolve(Config(), {"budget": budget}, "medium-replay")
    assert config.n_tau < config.batch_size == first_update_step(config)
    assert kappa(config, config.batch_size) == pytest.approx(0.1)
    assert kappa(config, config.batch_size + kappa_ramp_steps(config)) == pytest.approx(0.9)
    assert first_update_step(dataclasses.replace(config, opt=False)) == config.batch_size


def test_kappa_ramp_follows_phase_length_overrides():
    """--n-tau / --online-steps (and every ablation cell) keep kappa_start at the first update and the ramp's share
    of fine-tuning: the N_tau grid's cells differ only in N_tau."""
    cells = [resolve(Config(), {"budget": "quick", "n_tau": n_tau}, "medium-replay") for n_tau in (300, 1_000, 3_000)]
    cells.append(resolve(Config(), {"budget": "quick", "online_steps": 30_000}, "medium-replay"))
    for cell in cells:
        start = first_update_step(cell)
        assert kappa(cell, start) == pytest.approx(0.1)
        ramp = kappa_ramp_steps(cell)
        assert ramp == round(cell.kappa_ramp_share * (cell.online_steps - start))
        assert kappa(cell, start + ramp // 2) == pytest.approx(0.5, abs=1e-3)
    explicit = resolve(Config(), {"budget": "quick", "kappa_ramp_share": 0.0}, "medium-replay")
    assert kappa(explicit, first_update_step(explicit)) == 0.9


@pytest.mark.parametrize("budget", ["paper", "study", "quick"])
def test_budgets_keep_the_papers_proportions(budget):
    """N_tau is 25k of 300k online steps (8.3%) in the paper, so TD3 fine-tunes ~9% longer than OPT; the reduced
    budgets keep that ratio."""
    config = resolve(Config(), {"budget": budget}, "medium-replay", "hopper")
    assert config.n_tau / config.online_steps == pytest.approx(25_000 / 300_000, rel=0.01)
    assert config.n_tau >= config.batch_size  # updates, and the kappa ramp, start right after the collection


def test_tau_scaling_gives_each_phase_the_papers_updates_times_tau():
    """--tau-scaling budget: tau x (paper's phase length / budget's), at most 1; fine-tuning keeps tau; the paper
    budget and --tau-scaling none keep tau everywhere; length overrides keep the budget's rate."""
    def rates(budget, **overrides):
        config = resolve(Config(), {"budget": budget, "tau_scaling": "budget", **overrides}, "random", "walker2d")
        return tuple(phase_tau(config, phase) for phase in ("offline", "pretrain", "finetune"))

    assert rates("paper") == (0.005, 0.005, 0.005)
    assert rates("quick") == pytest.approx((0.005 * 1_000_000 / 20_000, 0.005 * 50_000 / 20_000, 0.005))  # 0.25
    assert rates("study") == pytest.approx((0.025, 0.005, 0.005))
    assert rates("smoke") == pytest.approx((1.0, 1.0, 0.005))  # 0.005 x 1M / 200 = 25, clipped
    assert rates("quick", n_pretrain=5_000, offline_steps=1_000) == rates("quick")
    unscaled = resolve(Config(), {"budget": "quick"}, "random", "walker2d")
    assert {phase_tau(unscaled, p) for p in ("offline", "pretrain", "finetune")} == {0.005}
    door = resolve(Config(), {"budget": "quick", "tau_scaling": "budget"}, "cloned", "door")  # SPOT's own budget
    assert phase_tau(door, "pretrain") == pytest.approx(0.005 * 50_000 / 1_000)
    with pytest.raises(ValueError, match="--tau-scaling must be 'none' or 'budget', got 'phase'"):
        resolve(Config(), {"tau_scaling": "phase"}, "random", "walker2d")


@pytest.mark.parametrize("tau_scaling", ["none", "budget"])
def test_offline_and_pretrain_targets_move_at_the_phase_rate(tau_scaling):
    """One delayed offline update moves Q_off's target, and one delayed pre-training update Q_on's, by exactly
    their phase's Polyak rate: target' = (1 - tau) target + tau online."""
    config = resolve(Config(), {"budget": "quick", "hidden": (8,), "tau_scaling": tau_scaling}, "random")
    agent = OPTAgent(1, 1, config)
    for phase, update, target, online in (
            ("offline", lambda: agent.backbone.offline_update(B, step=1), agent.backbone.critic_target,
             agent.backbone.critic),
            ("pretrain", lambda: agent.pretrain_update(B, B, step=1), agent.q_on_target, agent.q_on)):
        before = [p.clone() for p in target.parameters()]
        update()
        rate = phase_tau(config, phase)
        assert rate == (0.005 if tau_scaling == "none" else {"offline": 0.25, "pretrain": 0.0125}[phase])
        for old, new, source in zip(before, target.parameters(), online.parameters()):
            torch.testing.assert_close(new, (1 - rate) * old + rate * source, rtol=1e-6, atol=1e-7)


def test_density_ratio_loss_and_priorities_hand_values():
    w_off, w_on = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.5])
    expected = math.log(2) / 2 - math.log(2 / 3) / 2
    assert density_ratio_loss(w_off, w_on).item() == pytest.approx(expected, rel=1e-6)
    pr = balanced_priorities(torch.tensor([32.0, 1e-30, 1e30]), torch.tensor([1.0, 32.0]), temperature=5.0)
    norm = (1 + 2) / 2  # mean of 1^(1/5) and 32^(1/5)
    np.testing.assert_allclose(pr.numpy(), [2.0 / norm, 1e-3, 1e3], rtol=1e-5)


def test_density_ratio_net_learns_the_ratio():
    """Trained on N(0,1) (offline) vs N(1,1) (online) the optimum is w = p_on / p_off = exp(x - 1/2)."""
    torch.manual_seed(0)
    agent = OPTAgent(1, 1, Config(hidden=(32, 32), density_lr=3e-3))
    for _ in range(600):
        x_off, x_on = torch.randn(256, 1), torch.randn(256, 1) + 1
        zeros = torch.zeros(256, 1)
        off = Batch(x_off, zeros, zeros[:, 0], x_off, zeros[:, 0])
        on = Batch(x_on, zeros, zeros[:, 0], x_on, zeros[:, 0])
        loss = agent.density_step_loss(off, on)
        agent.density_opt.zero_grad()
        loss.backward()
        agent.density_opt.step()
    x = torch.tensor([[-0.5], [0.5], [1.5]])
    w = agent.density(x, torch.zeros(3, 1)).detach().numpy()
    np.testing.assert_allclose(np.log(w), x[:, 0].numpy() - 0.5, atol=0.35)


def _meta_objective(q_on, off, on, config):
    params = q_on.layer_params()
    target_critic = tiny_critic([1.0, 1.2]).double()
    actor = tiny_actor().double()
    c = Config(**{**config.to_json(), "policy_noise": 0.0})
    y_off = td_target(target_critic.layer_params(), actor, off, c)
    y_on = td_target(target_critic.layer_params(), actor, on, c)
    return meta_adaptation_loss(params, off, y_off, on, y_on, c)


def test_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    config = Config(meta_inner_lr=0.3, meta_loss_weight="one", gamma=0.9)
    q_on = Critic(1, 1, hidden=(3,)).double()
    mk = lambda *xs: Batch(*(torch.tensor(x, dtype=torch.float64) for x in xs))  # noqa: E731
    off = mk([[0.5], [1.0], [-0.2]], [[0.2], [-0.3], [0.9]], [1.0, -0.5, 0.3], [[1.0], [0.1], [0.4]], [0.0, 0.0, 1.0])
    on = mk([[1.5], [-1.0]], [[-0.7], [0.4]], [0.2, 2.0], [[0.3], [-0.5]], [0.0, 0.0])
    total, _, _ = _meta_objective(q_on, off, on, config)
    params = list(q_on.parameters())
    grads = torch.autograd.grad(total, params)

    def value():
        return _meta_objective(q_on, off, on, config)[0].item()

    eps = 1e-6
    worst = 0.0
    first_order_gap = 0.0
    for p, g in zip(params, grads):
        for i in range(p.numel()):
            flat = p.data.view(-1)
            old = flat[i].item()
            flat[i] = old + eps
            up = value()
            flat[i] = old - eps
            down = value()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            worst = max(worst, abs(fd - g.reshape(-1)[i].item()))
    assert worst < 1e-6

    # The second-order term matters here: dropping it (first-order approximation) changes the gradient.
    params_fo = [p.detach().clone().requires_grad_() for p in params]
    q_fo = Critic(1, 1, hidden=(3,)).double()
    with torch.no_grad():
        for dst, src in zip(q_fo.parameters(), params_fo):
            dst.copy_(src)
    loss_off = td_losses(q_fo.layer_params(), off, _targets(off, config)).sum()
    g_off = torch.autograd.grad(loss_off, list(q_fo.parameters()))
    with torch.no_grad():
        for p, g in zip(q_fo.parameters(), g_off):
            p -= config.meta_inner_lr * g
    loss_on = td_losses(q_fo.layer_params(), on, _targets(on, config)).sum()
    g_on_fo = torch.autograd.grad(loss_on, list(q_fo.parameters()))
    for g, go, gon in zip(grads, g_off, g_on_fo):
        first_order_gap = max(first_order_gap, (g - (go + gon)).abs().max().item())
    assert first_order_gap > 1e-3


def _targets(b, config):
    c = Config(**{**config.to_json(), "policy_noise": 0.0})
    return td_target(tiny_critic([1.0, 1.2]).double().layer_params(), tiny_actor().double(), b, c)


def test_loss_ratio_weight_scales_online_term_down_only():
    torch.manual_seed(1)
    q_on = Critic(1, 1, hidden=(4,))
    off = B
    on = batch(obs=[0.1, 0.3], action=[0.0, 0.1], reward=[50.0, 60.0], next_obs=[0.0, 0.2], done=[0.0, 0.0])
    config = Config(meta_loss_weight="ratio", policy_noise=0.0)
    y_off = td_target(tiny_critic([1.0, 1.0]).layer_params(), tiny_actor(), off, config)
    y_on = td_target(tiny_critic([1.0, 1.0]).layer_params(), tiny_actor(), on, config)
    total, l_off, l_on = meta_adaptation_loss(q_on.layer_params(), off, y_off, on, y_on, config)
    assert l_on > l_off  # the online batch has large rewards, so its loss is larger ...
    assert total.item() == pytest.approx(2 * l_off.item(), rel=1e-5)  # ... and w = L_off / L_on caps it


def test_stacked_critics_match_separate_calls_and_route_gradients():
    torch.manual_seed(0)
    a, b = Critic(3, 2), Critic(3, 2)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    from opt_fast.networks import q_values

    stacked = q_values(stack_params(a, b), obs, act)
    torch.testing.assert_close(stacked, torch.cat([a(obs, act), b(obs, act)]))
    stacked[2:].sum().backward()
    assert all(p.grad.abs().max() == 0 for p in a.parameters())
    assert all(p.grad.abs().max() > 0 for p in b.parameters())


def test_ensemble_members_are_independent_and_init_like_linear():
    torch.manual_seed(0)
    net = EnsembleMLP(3, 4, 2, hidden=(8,))
    x = torch.randn(3, 6, 4)
    out = net(x)
    for e in range(3):
        h = torch.relu(x[e] @ net.weights[0][e] + net.biases[0][e])
        torch.testing.assert_close(out[e], h @ net.weights[1][e] + net.biases[1][e])
    assert net.weights[0].abs().max() <= 1 / math.sqrt(4)
    spot_like = EnsembleMLP(1, 4, 2, hidden=(8,), last_layer_init=1e-3, layer_norm=True)
    assert spot_like.weights[-1].abs().max() <= 1e-3 and len(spot_like.norm_weights) == 1
