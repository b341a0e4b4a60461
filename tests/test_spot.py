"""SPOT: the VAE's negative ELBO and sampling, the actor loss, lambda cooling, the VAE stage of the offline phase,
network options, the online discount, and the per-family presets."""
import math

import pytest
import torch

from opt_fast.agents.opt import OPTAgent
from opt_fast.agents.spot import SPOT, BehaviourVAE, spot_actor_loss
from opt_fast.agents.common import Batch
from opt_fast.agents.td3 import td_losses, td_target
from opt_fast.config import (Config, first_update_step, kappa, kappa_ramp_steps, offline_phase_steps, online_discount,
                             resolve)

OBS, ACT = 3, 2
SMALL = dict(hidden=(8, 8), vae_hidden=(8, 8), batch_size=4)


def spot_config(**overrides) -> Config:
    return resolve(Config(budget="smoke"), {"env": "door-cloned", **SMALL, **overrides}, "cloned", "door")


def batch(n: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, OBS, generator=g), torch.rand(n, ACT, generator=g) * 2 - 1, torch.randn(n, generator=g),
                 torch.randn(n, OBS, generator=g), torch.zeros(n))


def constant_vae(mean: float, log_std: float, output: float) -> BehaviourVAE:
    """A VAE whose encoder outputs (mean, log_std) everywhere and whose decoder outputs tanh(output) for any z."""
    vae = BehaviourVAE(OBS, ACT, hidden=(4,))
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        latent = vae.latent_dim
        vae.encoder.biases[-1][0, 0, :latent] = mean
        vae.encoder.biases[-1][0, 0, latent:] = log_std
        vae.decoder.biases[-1].fill_(output)
    return vae


@pytest.mark.parametrize("log_std,clamped", [(0.3, 0.3), (-10.0, -4.0), (20.0, 15.0)])
def test_nelbo_matches_hand_computation_with_log_std_clamp(log_std, clamped):
    vae = constant_vae(mean=0.7, log_std=log_std, output=0.4)
    b = batch()
    got = vae.nelbo(b.obs, b.action, beta=0.5)
    reconstruction = ((math.tanh(0.4) - b.action) ** 2).mean(dim=-1)
    kl = -0.5 * (1 + 2 * clamped - 0.7**2 - math.exp(2 * clamped))  # the same for every latent dimension
    torch.testing.assert_close(got, reconstruction + 0.5 * kl, rtol=1e-5, atol=1e-3 if clamped == 15.0 else 1e-6)


def test_sampled_latents_are_clipped_to_half():
    """Decoder a = tanh(z_1) (obs ignored): sampled actions cover exactly [-tanh(0.5), tanh(0.5)]."""
    vae = BehaviourVAE(OBS, 1, hidden=(2,))
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.zero_()
        vae.decoder.weights[0][0, OBS, 0], vae.decoder.weights[0][0, OBS, 1] = 1.0, -1.0  # relu(z1), relu(-z1)
        vae.decoder.weights[1][0, 0, 0], vae.decoder.weights[1][0, 1, 0] = 1.0, -1.0
    torch.manual_seed(0)
    actions = vae.sample(torch.zeros(2000, OBS))
    assert actions.max().item() == pytest.approx(math.tanh(0.5), abs=1e-6)
    assert actions.min().item() == pytest.approx(-math.tanh(0.5), abs=1e-6)


def test_actor_loss_normalises_q_and_adds_the_density_penalty():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    nelbo = torch.tensor([0.5, 1.5])
    loss = spot_actor_loss(q, nelbo, 2.0)
    # -mean(q) / mean|q| + lambda * mean(nelbo) = 1 / 2 + 2 * 1
    assert loss.item() == pytest.approx(1.0 / 2.0 + 2.0 * 1.0)
    loss.backward()
    # The scale 1 / mean|Q| carries no gradient: d/dq_i of -mean(q) / 2 is -1/4.
    torch.testing.assert_close(q.grad, torch.tensor([-0.25, -0.25]))


@pytest.mark.parametrize("progress,factor", [(0.0, 1.0), (0.25, 0.75), (0.9, 0.5), (1.0, 0.5)])
def test_online_lambda_cools_to_its_floor(progress, factor):
    config = spot_config(spot_lambda=0.8, spot_lambda_end=0.5)
    spot = SPOT(OBS, ACT, config)
    obs = batch().obs

    def q_mix(actions):
        return actions.sum(dim=-1) + 3.0

    torch.manual_seed(1)
    got = spot.online_actor_loss(obs, q_mix, torch.tensor(progress))
    torch.manual_seed(1)
    pi = spot.actor(obs)
    expected = spot_actor_loss(q_mix(pi), spot.vae.nelbo(obs, pi, config.vae_beta), 0.8 * factor)
    torch.testing.assert_close(got, expected)


def test_offline_phase_trains_the_vae_first_then_actor_and_critic_with_the_vae_fixed():
    config = spot_config(vae_steps=3, policy_delay=2)
    spot = SPOT(OBS, ACT, config)
    assert offline_phase_steps(config) == config.offline_steps + 3

    def snapshot():
        return {name: [p.detach().clone() for p in module.parameters()]
                for name, module in (("vae", spot.vae), ("actor", spot.actor), ("critic", spot.critic))}

    def changed(before, after):
        return {name for name in before if any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))}

    before = snapshot()
    for step in range(3):
        assert set(spot.offline_update(batch(seed=step), step)) == {"vae_loss"}
    after_vae = snapshot()
    vae_grads = [p.grad.clone() for p in spot.vae.parameters()]
    assert changed(before, after_vae) == {"vae"}
    assert set(spot.offline_update(batch(seed=3), 3)) == {"critic_loss"}
    assert set(spot.offline_update(batch(seed=4), 4)) == {"critic_loss", "actor_loss"}
    assert changed(after_vae, snapshot()) == {"actor", "critic"}
    # The actor's density penalty puts no gradient into the VAE.
    assert all(torch.equal(p.grad, g) for p, g in zip(spot.vae.parameters(), vae_grads))


def test_spot_networks_carry_layer_norm_and_last_layer_init_and_q_on_matches_q_off():
    config = spot_config(hidden=(32, 32))
    assert config.layer_norm and config.actor_init == 1e-3 and config.critic_init == 3e-3
    agent = OPTAgent(OBS, ACT, config)
    actor, critic = agent.backbone.actor.net, agent.backbone.critic
    assert actor.layer_norm and critic.layer_norm and agent.q_on.layer_norm
    assert actor.weights[-1].abs().max() <= 1e-3 and critic.weights[-1].abs().max() <= 3e-3
    assert agent.q_on.weights[-1].abs().max() <= 3e-3
    assert critic.weights[0].abs().max() > 3e-3  # hidden layers keep the default initialisation
    assert {k: v.shape for k, v in agent.q_on.state_dict().items()} == \
        {k: v.shape for k, v in critic.state_dict().items()}
    assert set(agent.backbone.modules()) >= {"vae"} and set(agent.backbone.optimizers()) >= {"vae_opt"}


def test_updates_after_the_offline_phase_use_the_online_discount():
    config = resolve(Config(budget="smoke"), {"env": "antmaze-umaze", **SMALL, "policy_noise": 0.0}, "umaze",
                     "antmaze")
    assert config.gamma == 0.99 and online_discount(config) == 0.995
    agent = OPTAgent(OBS, ACT, config)
    b = batch()
    target = td_target(agent.q_on_target.layer_params(), agent.backbone.actor_target, b,
                       Config(gamma=0.995, policy_noise=0.0))
    expected = td_losses(agent.q_on.layer_params(), b, target).sum()
    got = agent.pretrain_losses(b, None)["loss"]
    torch.testing.assert_close(got, expected)


def test_presets_per_family():
    door = resolve(Config(), {}, "cloned", "door")
    assert (door.backbone, door.utd, door.actor_lr) == ("spot", 1, 1e-4)
    assert (door.spot_lambda, door.spot_lambda_end, door.layer_norm) == (1.0, 0.5, True)
    assert (door.kappa_start, door.kappa_end) == (0.1, 0.9)
    assert kappa(door, first_update_step(door) + kappa_ramp_steps(door)) == pytest.approx(0.9)
    paper = resolve(Config(), {"budget": "paper"}, "cloned", "door")
    assert kappa_ramp_steps(paper) == 250_000 and paper.vae_steps == 100_000
    for kind, lam, ramp in (("umaze", 0.25, 100_000), ("medium-play", 0.05, 100_000),
                            ("medium-diverse", 0.025, 100_000), ("large-diverse", 0.025, 200_000)):
        maze = resolve(Config(), {"budget": "paper"}, kind, "antmaze")
        assert (maze.spot_lambda, maze.spot_lambda_end, kappa_ramp_steps(maze), maze.online_gamma) == (lam, 0.2, ramp, 0.995)
        assert not maze.layer_norm
    hopper = resolve(Config(), {}, "medium", "hopper")
    assert (hopper.backbone, hopper.utd, hopper.online_gamma) == ("td3", 5, 0.0)


@pytest.mark.parametrize("overrides,message", [
    ({"backbone": "iql"}, "--backbone"),
    ({"layer_norm": True}, "SPOT backbone"),
    ({"online_gamma": 1.5}, "--online-gamma"),
    ({"antmaze_reward": "zero"}, "--antmaze-reward"),
])
def test_bad_spot_options_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve(Config(), overrides, "medium", "hopper")
