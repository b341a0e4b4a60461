"""MJX envs against gymnasium's (MuJoCo's C engine): the same start states and actions give the same trajectories.

MJX on CPU compiles each (family, observation layout, precision) once, ~15 CPU seconds, so the module keeps one env
per family (B = 2) and short horizons. Stated tolerances, on the float32 observations and rewards:

- float64 simulation (walker2d, halfcheetah, ant): 1e-5;
- float32 simulation (hopper, the trainer's default): 1e-4 on observations, 1e-5 on rewards;
- Ant's clipped contact forces: 1e-4 (the solver's 1e-8 tolerance bounds its cost, not the forces).

Horizons: 200 steps per version, 1005 for halfcheetah (through the time limit), 100 for Ant, whose contacts amplify
differences at the solver's tolerance by ~1e4 per 50 steps, in MuJoCo against itself as well.
"""
from __future__ import annotations

import functools

import jax
import mujoco
import numpy as np
import pytest
import torch

from opt_fast import envs
from opt_fast.envs import mjx as mjx_envs
from opt_fast.envs.locomotion import MAX_EPISODE_STEPS
from opt_fast.envs.mjx import GymVecEnv, MJXVecEnv, make_vec_env

pytestmark = pytest.mark.filterwarnings("ignore:.*is out of date.*:DeprecationWarning")

B = 2


@functools.cache
def _mjx_env(family: str, version: str = "v5", ant_obs: str = "d4rl", precision: str = "float64") -> MJXVecEnv:
    return MJXVecEnv(family, B, version, seed=7, ant_obs=ant_obs, precision=precision)


def _gaussian_actions(steps: int, act_dim: int, seed: int = 0) -> np.ndarray:
    # Exploration-sized actions: uniform ones make HalfCheetah chaotic (C against C with a 1e-12 perturbation
    # differs by O(1) within 100 steps), which no cross-engine comparison could survive.
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, 0.3, size=(steps, B, act_dim)), -1.0, 1.0).astype(np.float32)


def _run_side_by_side(env: MJXVecEnv, gyms: list, actions: np.ndarray) -> dict[str, float]:
    """Steps ``env`` and the gymnasium envs with the same actions from the same states; after an episode ends the
    gymnasium env is put in MJX's reset state. Returns the largest differences, on the positions and velocities
    (``obs``) and on Ant's contact forces, and counts of ended episodes."""
    qpos = torch.tensor(np.stack([g.unwrapped.data.qpos for g in gyms]))
    qvel = torch.tensor(np.stack([g.unwrapped.data.qvel for g in gyms]))
    state_dim = env.nq + env.nv - mjx_envs._FAMILIES[env.family].qpos_skip
    errors = {"obs": 0.0, "contact_forces": 0.0, "reward": 0.0, "reset_obs": 0.0, "terminated": 0, "truncated": 0}

    def compare(name: str, got: torch.Tensor, expected: np.ndarray) -> None:
        difference = np.abs(got.numpy() - expected)
        errors[name] = max(errors[name], float(difference[..., :state_dim].max()))
        if difference.shape[-1] > state_dim:
            errors["contact_forces"] = max(errors["contact_forces"], float(difference[..., state_dim:].max()))

    compare("obs", env.set_state(qpos, qvel), np.stack([g.unwrapped._get_obs() for g in gyms]))
    for t, action in enumerate(actions):
        result = env.step(torch.from_numpy(action))
        for i, g in enumerate(gyms):
            gym_obs, reward, terminated, truncated, _ = g.step(action[i])
            assert (bool(result.terminated[i]), bool(result.truncated[i])) == (terminated, truncated), (t, i)
            compare("obs", result.final_obs[i], gym_obs)
            errors["reward"] = max(errors["reward"], abs(float(result.reward[i]) - reward))
            if terminated or truncated:
                errors["terminated"] += terminated
                errors["truncated"] += truncated
                q, v = (x[i].numpy().astype(np.float64) for x in env.get_state())
                g.reset()
                g.unwrapped.set_state(q, v)
                compare("reset_obs", result.obs[i], g.unwrapped._get_obs())
            else:
                assert torch.equal(result.obs[i], result.final_obs[i])
    return errors


def _gyms_after_reset(family: str, version: str, ant_obs: str = "contact") -> list:
    return [envs.make_env(family, version, seed=100 + i, ant_obs=ant_obs) for i in range(B)]


@pytest.mark.parametrize(("family", "version", "precision", "steps", "obs_tolerance"), [
    ("hopper", "v5", "float32", 200, 1e-4),
    ("hopper", "v4", "float32", 200, 1e-4),  # same compiled step; v4 pays the healthy reward when terminating
    ("walker2d", "v5", "float64", 200, 1e-5),
    ("walker2d", "v4", "float64", 200, 1e-5),  # same compiled step; v4's XML (foot friction)
    ("halfcheetah", "v5", "float64", MAX_EPISODE_STEPS + 5, 1e-5),  # through the time limit
])
def test_planar_walkers_follow_gymnasium(family, version, precision, steps, obs_tolerance):
    env = _mjx_env(family, version, precision=precision)
    errors = _run_side_by_side(env, _gyms_after_reset(family, version), _gaussian_actions(steps, env.act_dim))
    assert errors["obs"] < obs_tolerance and errors["reward"] < 1e-5 and errors["reset_obs"] < 1e-6, errors
    if family == "halfcheetah":
        assert (errors["terminated"], errors["truncated"]) == (0, B), errors
    else:
        assert errors["terminated"] >= B, errors  # auto-reset exercised


def test_ant_follows_gymnasium_with_contact_forces():
    """Ant-v5 with gymnasium's cfrc_ext observation (105 entries) and contact cost, from a standing state.

    Standing, because MJX's plane-capsule contact frame falls back to a fixed tangent once a capsule is tilted more
    than 60 degrees from the floor (mujoco-mjx 3.17 collision_primitive.plane_capsule), where MuJoCo follows the
    capsule axis; the friction pyramid then differs. Falling from the reset pose tilts the lower legs that far.
    """
    gyms = _gyms_after_reset("ant", "v5")
    stand = np.zeros(8, np.float32)
    stand[[1, 3]], stand[[5, 7]] = -0.5, 0.5  # ankles towards 30 degrees
    for g in gyms:
        for _ in range(50):
            g.step(stand)
        qpos, qvel = g.unwrapped.data.qpos.copy(), g.unwrapped.data.qvel.copy()
        g.reset()
        g.unwrapped.set_state(qpos, qvel)
    env = _mjx_env("ant", "v5", "contact")
    actions = _gaussian_actions(100, env.act_dim)
    actions[:, :, [1, 3, 5, 7]] = stand[[1, 3, 5, 7]] + 0.2 * np.random.default_rng(1).normal(size=(100, B, 4))
    errors = _run_side_by_side(env, gyms, np.clip(actions, -1.0, 1.0))
    assert errors["obs"] < 1e-5 and errors["reward"] < 1e-5 and errors["contact_forces"] < 1e-4, errors


def test_position_integration_matches_mujoco():
    """Free-joint quaternions and hinges advance as mj_integratePos does."""
    model = envs.make_env("ant").unwrapped.model
    rng = np.random.default_rng(0)
    qpos = model.qpos0 + rng.normal(0.0, 0.3, model.nq)
    qvel = rng.normal(0.0, 3.0, model.nv)
    expected = qpos.copy()
    mujoco.mj_integratePos(model, expected, qvel, 0.01)
    with jax.enable_x64(True):
        mx = mujoco.mjx.put_model(model)
        got = jax.jit(lambda q, v: mjx_envs._integrate_pos(mx, q, v, 0.01))(qpos, qvel)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-14)


def test_family_rules_match_gymnasium():
    for family, rules in mjx_envs._FAMILIES.items():
        sim = envs.make_env(family).unwrapped
        assert sim.frame_skip == rules.frame_skip, family
        assert sim._ctrl_cost_weight == rules.ctrl_cost_weight, family
        assert sim._reset_noise_scale == rules.reset_noise_scale, family
        assert getattr(sim, "_healthy_reward", 0.0) == rules.healthy_reward, family
        assert sim.observation_structure["skipped_qpos"] == rules.qpos_skip, family


def test_reset_noise_and_seeding():
    env = _mjx_env("hopper", precision="float32")
    assert env.get_state()[0].dtype == torch.float32
    first = env.reset(seed=3)
    assert first.shape == (B, 11) and first.dtype == torch.float32
    assert torch.equal(env.reset(seed=3), first)
    assert not torch.equal(env.reset(), first)  # the stream continues
    assert not torch.equal(first[0], first[1])  # each env draws its own noise
    qpos, qvel = env.get_state()
    qpos0 = envs.make_env("hopper").unwrapped.init_qpos
    assert np.abs(qpos.numpy() - qpos0).max() <= 5e-3 and np.abs(qvel.numpy()).max() <= 5e-3
    # The constructor's seed drives the first reset.
    np.testing.assert_array_equal(MJXVecEnv("hopper", B, seed=7).reset().numpy(), env.reset(seed=7).numpy())


def test_ant_d4rl_observation_pads_84_zeros():
    env = MJXVecEnv("ant", B, ant_obs="d4rl")
    obs = env.reset().numpy()
    qpos, qvel = (x.numpy() for x in env.get_state())
    assert obs.shape == (B, 111) and env.obs_dim == 111
    np.testing.assert_array_equal(obs[:, :27], np.concatenate([qpos[:, 2:], qvel], axis=1).astype(np.float32))
    assert not obs[:, 27:].any()


def test_bad_input_raises():
    env = MJXVecEnv("hopper", B)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(torch.zeros(B, 3))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 3\)"):
        env.step(torch.zeros(B, 4))
    with pytest.raises(ValueError, match=r"qvel must have shape \(2, 6\)"):
        env.set_state(torch.zeros(B, 6), torch.zeros(B, 5))
    with pytest.raises(ValueError, match="precision"):
        MJXVecEnv("hopper", B, precision="float16")
    with pytest.raises(ValueError, match="num_envs"):
        MJXVecEnv("hopper", 0)
    with pytest.raises(ValueError, match="unknown env family"):
        MJXVecEnv("humanoid", B)
    with pytest.raises(ValueError, match="env backend"):
        make_vec_env("hopper", B, backend="brax")


def test_make_vec_env_backends_share_the_interface():
    for backend, cls in [("gymnasium", GymVecEnv), ("mjx", MJXVecEnv)]:
        env = make_vec_env("walker2d", B, backend, "v4", seed=1)
        assert isinstance(env, cls) and (env.obs_dim, env.act_dim) == (17, 6)
        obs = env.reset()
        assert obs.shape == (B, 17) and obs.dtype == torch.float32 and obs.device == env.device
        env.close()


def test_gym_vec_env_matches_single_envs():
    """Same-step auto-reset: ``obs`` starts the next episode, ``final_obs`` ends this one; env i is seed + i."""
    vec = GymVecEnv("hopper", B, seed=5)
    singles = [envs.make_env("hopper", seed=5 + i) for i in range(B)]
    expected = np.stack([s.unwrapped._get_obs() for s in singles])
    np.testing.assert_allclose(vec.reset().numpy(), expected, rtol=0, atol=1e-6)
    actions = np.random.default_rng(1).uniform(-1, 1, size=(100, B, 3)).astype(np.float32)
    ended = 0
    for action in actions:
        result = vec.step(torch.from_numpy(action))
        for i, single in enumerate(singles):
            obs, reward, terminated, truncated, _ = single.step(action[i])
            np.testing.assert_allclose(result.final_obs[i].numpy(), obs, rtol=0, atol=1e-6)
            assert float(result.reward[i]) == pytest.approx(reward, abs=1e-6)
            assert (bool(result.terminated[i]), bool(result.truncated[i])) == (terminated, truncated)
            if terminated or truncated:
                ended += 1
                obs, _ = single.reset()
            np.testing.assert_allclose(result.obs[i].numpy(), obs, rtol=0, atol=1e-6)
    assert ended > 0


def test_gym_vec_env_set_and_get_state_round_trip():
    vec = GymVecEnv("ant", B, ant_obs="d4rl")
    vec.reset()
    model = envs.make_env("ant").unwrapped.model
    qpos = torch.tensor(model.qpos0).repeat(B, 1) + 0.01
    qvel = torch.arange(B * model.nv, dtype=torch.float64).reshape(B, model.nv) / 100
    obs = vec.set_state(qpos, qvel)
    got_qpos, got_qvel = vec.get_state()
    assert torch.equal(got_qpos, qpos) and torch.equal(got_qvel, qvel)
    assert obs.shape == (B, 111) and not obs[:, 27:].any()
    np.testing.assert_allclose(obs[:, :27].numpy(), torch.cat([qpos[:, 2:], qvel], 1).numpy(), rtol=0, atol=1e-6)
