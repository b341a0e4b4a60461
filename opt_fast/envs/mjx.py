"""Batched locomotion envs for online collection and evaluation: MJX (JAX) or gymnasium, behind one interface.

:class:`MJXVecEnv` runs B copies of Hopper, Walker2d, HalfCheetah or Ant on ``mujoco-mjx``, built from the MuJoCo
model of :func:`opt_fast.envs.make_env` (the same XML, including Walker2d-v4's foot friction) with the
observation, reward, termination and truncation rules of gymnasium's ``v5`` (or ``v4``) env: forward reward
from the x displacement over ``dt = frame_skip * timestep``, control cost on the unclipped action, healthy
ranges, ``v5`` paying no healthy reward on the terminating step, 1000-step episodes reported as truncation,
gymnasium's reset noise (drawn from a JAX PRNG, so the episodes differ from gymnasium's numpy draws). One step
of all B envs is one compiled call, auto-reset included; observations reach torch through DLPack, without a
copy when JAX and torch share the device. :class:`GymVecEnv` is its reference twin: the same API over
``gymnasium.vector.SyncVectorEnv`` of ``make_env`` envs. :func:`make_vec_env` picks one by ``backend``.

Ant observations follow :mod:`opt_fast.envs.locomotion`' ``ant_obs``: ``d4rl`` (27 entries and 84 zeros), ``plain`` (27)
or ``contact`` (gymnasium's clipped ``cfrc_ext``: v5 78 entries without the world body, v4 all 84). On v5 the
reward always charges the contact cost, on v4 only with ``contact``, as gymnasium does.

Where MJX and MuJoCo's C engine part (``tests/test_mjx_envs.py`` states the tolerances):

- RK4: MuJoCo 4 advances free-joint rotations Runge-Kutta-Munthe-Kaas style; mujoco-mjx 3.17's ``mjx.step`` does
  not, so this module integrates RK4 itself (:func:`_rk4`) and matches MuJoCo to rounding.
- Ant's steeply tilted legs (a capsule more than 60 degrees off the floor): mjx's plane-capsule contact takes a
  fixed tangent where MuJoCo follows the capsule axis, so the friction pyramid, and from there the trajectory,
  differs. Standing and walking Ants stay below that tilt; a fall from the reset pose does not.
- float32 (the default) against MuJoCo's float64: Hopper and Walker2d observations agree to ~2e-4 over 200
  steps, HalfCheetah's to ~3e-3 over 300 (0.3 by 1000); Ant's contacts amplify float32 rounding to O(1) within
  ~40 steps. With ``precision="float64"`` all agree to ~1e-6 (Ant over 100 steps, its contact forces to 1e-4).
"""
from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import torch
from mujoco import mjx

from opt_fast import envs
from opt_fast.envs.locomotion import MAX_EPISODE_STEPS

BACKENDS = ("gymnasium", "mjx")
PRECISIONS = ("float32", "float64")


class StepResult(NamedTuple):
    """One step of B envs, as torch tensors on the env's device."""

    obs: torch.Tensor
    """[B, obs_dim] float32: the observation to act on next, from a fresh episode where one ended."""
    reward: torch.Tensor
    """[B] float32."""
    terminated: torch.Tensor
    """[B] bool: the episode ended in a terminal state (unhealthy)."""
    truncated: torch.Tensor
    """[B] bool: the episode hit the 1000-step limit (both flags are set when the last step is also terminal)."""
    final_obs: torch.Tensor
    """[B, obs_dim] float32: the observation this step reached, before any auto-reset; the replay's next state.
    Equal to ``obs`` where no episode ended."""


class VecEnv(abc.ABC):
    """B envs of one task stepped together, with auto-reset; inputs and outputs are torch tensors."""

    num_envs: int
    obs_dim: int
    act_dim: int
    device: torch.device
    """Where observations, rewards and flags live."""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Starts a new episode in every env; returns the [B, obs_dim] observations.

        ``seed`` restarts the reset-noise stream; without it the stream continues (the first reset uses the
        constructor's seed).
        """

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Applies [B, act_dim] actions for one env step; envs whose episode ended start a new one."""

    @abc.abstractmethod
    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        """Starts a new episode in every env from [B, nq] positions and [B, nv] velocities instead of the reset
        noise; returns the observations."""

    @abc.abstractmethod
    def get_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the [B, nq] positions and [B, nv] velocities (float64 for gymnasium, the simulation's
        precision for MJX)."""

    def close(self) -> None:  # noqa: B027 -- a no-op by default: only some batches hold resources
        """Releases the envs."""

    def _check_batch(self, name: str, value: torch.Tensor, width: int) -> None:
        if tuple(value.shape) != (self.num_envs, width):
            raise ValueError(f"{name} must have shape ({self.num_envs}, {width}), got {tuple(value.shape)}")


# ----------------------------------------------------------------------------------------------- gymnasium
def _observe_gym(env: gym.Env) -> np.ndarray:
    """``env``'s current observation through its observation wrappers (D4RL's Ant padding)."""
    wrappers = []
    layer = env
    while layer is not env.unwrapped:
        if isinstance(layer, gym.ObservationWrapper):
            wrappers.append(layer)
        layer = layer.env  # type: ignore[attr-defined]  # a wrapper, above the unwrapped env
    obs = env.unwrapped._get_obs()  # type: ignore[attr-defined]  # a MuJoCo env
    for wrapper in reversed(wrappers):
        obs = wrapper.observation(obs)
    return obs


class GymVecEnv(VecEnv):
    """B :func:`opt_fast.envs.make_env` envs in a ``SyncVectorEnv`` resetting in the step that ends an episode.

    Env ``i`` is seeded with ``seed + i`` (gymnasium's vector convention).
    """

    def __init__(self, family: str, num_envs: int, version: str = "v5", seed: int = 0, ant_obs: str = "d4rl",
                 device: torch.device | str = "cpu"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self._vec = gym.vector.SyncVectorEnv(
            [functools.partial(envs.make_env, family, version, ant_obs=ant_obs) for _ in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        self.num_envs = num_envs
        self.obs_dim, self.act_dim = envs.env_dims(family, version, ant_obs)
        self.device = torch.device(device)
        self._next_seed: int | None = seed

    def _tensor(self, array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=dtype).to(self.device)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        seed, self._next_seed = (self._next_seed if seed is None else seed), None
        obs, _ = self._vec.reset(seed=seed)
        return self._tensor(obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        self._check_batch("actions", actions, self.act_dim)
        obs, reward, terminated, truncated, info = self._vec.step(actions.detach().cpu().numpy().astype(np.float32))
        final_obs = obs.copy()
        for i in np.flatnonzero(info.get("_final_obs", np.zeros(self.num_envs, dtype=bool))):
            final_obs[i] = info["final_obs"][i]
        return StepResult(self._tensor(obs), self._tensor(reward), self._tensor(terminated, torch.bool),
                          self._tensor(truncated, torch.bool), self._tensor(final_obs))

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        model = self._vec.envs[0].unwrapped.model  # type: ignore[attr-defined]
        self._check_batch("qpos", qpos, model.nq)
        self._check_batch("qvel", qvel, model.nv)
        qpos_np = qpos.detach().cpu().numpy().astype(np.float64)
        qvel_np = qvel.detach().cpu().numpy().astype(np.float64)
        obs = []
        for env, q, v in zip(self._vec.envs, qpos_np, qvel_np):
            env.reset()  # restarts the step count and clears the solver warm start, as a reset does
            env.unwrapped.set_state(q, v)  # type: ignore[attr-defined]
            obs.append(_observe_gym(env))
        return self._tensor(np.stack(obs))

    def get_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        datas = [env.unwrapped.data for env in self._vec.envs]  # type: ignore[attr-defined]
        return (torch.from_numpy(np.stack([d.qpos for d in datas])).to(self.device),
                torch.from_numpy(np.stack([d.qvel for d in datas])).to(self.device))

    def close(self) -> None:
        self._vec.close()


# ----------------------------------------------------------------------------------------------- MJX rules
@dataclass(frozen=True)
class _Family:
    """The gymnasium rules (v4 and v5 defaults, gymnasium 1.4) of one task that do not depend on the version."""

    frame_skip: int
    ctrl_cost_weight: float
    healthy_reward: float
    """Paid on healthy steps; 0 for halfcheetah, which never terminates."""
    reset_noise_scale: float
    normal_qvel_noise: bool
    """qvel noise is ``scale * N(0, 1)`` (halfcheetah, ant) rather than ``U(-scale, scale)``."""
    qpos_skip: int
    """Leading qpos entries (x, or x and y) left out of the observation."""
    qvel_clip: float
    """Observed velocities are clipped to +-this (hopper, walker2d: 10)."""


_FAMILIES: dict[str, _Family] = {
    "hopper": _Family(4, 1e-3, 1.0, 5e-3, False, 1, 10.0),
    "walker2d": _Family(4, 1e-3, 1.0, 5e-3, False, 1, 10.0),
    "halfcheetah": _Family(5, 0.1, 0.0, 0.1, True, 1, np.inf),
    "ant": _Family(5, 0.5, 1.0, 0.1, True, 2, np.inf),
}
_ANT_CONTACT_COST_WEIGHT = 5e-4
_ANT_CONTACT_FORCE_RANGE = (-1.0, 1.0)
_ANT_MAIN_BODY = 1  # the torso, whose x displacement is rewarded


class _Rules(NamedTuple):
    """The reward terms that differ between versions, passed traced so v4 and v5 share one compiled step."""

    unhealthy_reward: jax.Array
    """Healthy reward paid on the terminating step: v4 pays it (``healthy or terminate_when_unhealthy``), v5 not."""
    contact_cost_weight: jax.Array
    """Ant: charged on v5 always, on v4 only with contact forces in the observation; 0 elsewhere."""


class _State(NamedTuple):
    """B envs between steps (every leaf has a leading batch axis)."""

    data: mjx.Data
    x_position: jax.Array
    """The x coordinate the forward reward differentiates, as gymnasium read it after the last step or reset."""
    steps: jax.Array
    """Steps taken in the current episode."""
    key: jax.Array
    """Per-env PRNG key for the next reset's noise."""


def _is_healthy(family: str, qpos: jax.Array, qvel: jax.Array) -> jax.Array:
    """gymnasium's ``is_healthy`` (identical in v4 and v5); NaN states come out unhealthy."""
    if family == "hopper":
        state = jnp.concatenate([qpos, qvel])[2:]
        return ((qpos[1] > 0.7) & (qpos[2] > -0.2) & (qpos[2] < 0.2)
                & jnp.all((state > -100.0) & (state < 100.0)))
    if family == "walker2d":
        return (qpos[1] > 0.8) & (qpos[1] < 2.0) & (qpos[2] > -1.0) & (qpos[2] < 1.0)
    if family == "ant":
        finite = jnp.all(jnp.isfinite(qpos)) & jnp.all(jnp.isfinite(qvel))
        return finite & (qpos[2] >= 0.2) & (qpos[2] <= 1.0)
    return jnp.array(True)  # halfcheetah never terminates


def _observe(family: str, tail: str, qpos: jax.Array, qvel: jax.Array, cfrc_ext: jax.Array) -> jax.Array:
    """gymnasium's ``_get_obs`` as float32 (the trainer's dtype); ``cfrc_ext`` is [nbody, 6]."""
    spec = _FAMILIES[family]
    parts = [qpos[spec.qpos_skip:], jnp.clip(qvel, -spec.qvel_clip, spec.qvel_clip)]
    if tail == "zeros":
        parts.append(jnp.zeros(cfrc_ext.size, qpos.dtype))
    elif tail == "all_bodies":
        parts.append(jnp.clip(cfrc_ext, *_ANT_CONTACT_FORCE_RANGE).ravel())
    elif tail == "without_world":
        parts.append(jnp.clip(cfrc_ext[1:], *_ANT_CONTACT_FORCE_RANGE).ravel())
    return jnp.concatenate(parts).astype(jnp.float32)


def _reset_sample(family: str, model: mjx.Model, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """gymnasium's ``reset_model`` noise around ``qpos0`` and zero velocity, drawn with ``key``."""
    spec = _FAMILIES[family]
    scale = spec.reset_noise_scale
    qpos_key, qvel_key = jax.random.split(key)
    dtype = model.qpos0.dtype
    qpos = model.qpos0 + jax.random.uniform(qpos_key, (model.nq,), dtype, -scale, scale)
    if spec.normal_qvel_noise:
        qvel = scale * jax.random.normal(qvel_key, (model.nv,), dtype)
    else:
        qvel = jax.random.uniform(qvel_key, (model.nv,), dtype, -scale, scale)
    return qpos, qvel


# ----------------------------------------------------------------------------------------------- MJX physics
def _quat_integrate(quat: jax.Array, omega: jax.Array, dt: jax.Array) -> jax.Array:
    """``quat`` rotated by the body-frame angular velocity ``omega`` for ``dt`` (MuJoCo's mju_quatIntegrate)."""
    speed = jnp.linalg.norm(omega)
    axis = omega / jnp.where(speed > 0, speed, 1.0)
    half = 0.5 * dt * speed
    rot = jnp.concatenate([jnp.cos(half)[None], jnp.sin(half) * axis])
    w1, v1, w2, v2 = quat[0], quat[1:], rot[0], rot[1:]
    product = jnp.concatenate([(w1 * w2 - v1 @ v2)[None], w1 * v2 + w2 * v1 + jnp.cross(v1, v2)])
    return product / jnp.linalg.norm(product)


def _integrate_pos(model: mjx.Model, qpos: jax.Array, qvel: jax.Array, dt: jax.Array) -> jax.Array:
    """``qpos`` advanced by ``qvel`` for ``dt`` (MuJoCo's mj_integratePos for free, hinge and slide joints)."""
    linear_q: list[int] = []
    linear_v: list[int] = []
    for jnt_type, qadr, vadr in zip(model.jnt_type, model.jnt_qposadr, model.jnt_dofadr):
        if jnt_type == mujoco.mjtJoint.mjJNT_FREE:
            linear_q += range(qadr, qadr + 3)
            linear_v += range(vadr, vadr + 3)
        else:
            linear_q.append(qadr)
            linear_v.append(vadr)
    qpos = qpos.at[np.array(linear_q)].add(dt * qvel[np.array(linear_v)])
    for jnt_type, qadr, vadr in zip(model.jnt_type, model.jnt_qposadr, model.jnt_dofadr):
        if jnt_type == mujoco.mjtJoint.mjJNT_FREE:
            qpos = qpos.at[qadr + 3:qadr + 7].set(_quat_integrate(qpos[qadr + 3:qadr + 7], qvel[vadr + 3:vadr + 6], dt))
    return qpos


def _dexpinv(theta: jax.Array, omega: jax.Array) -> jax.Array:
    """The rate of the rotation vector ``theta`` of a body turning at body-frame angular velocity ``omega``: the
    inverse differential of the exponential map, which MuJoCo 4's RK4 applies to free-joint rotations
    (Runge-Kutta-Munthe-Kaas; mujoco-mjx 3.17's RK4 does not, which the tests against gymnasium expose)."""
    angle = jnp.linalg.norm(theta)
    safe = jnp.where(angle > 0, angle, 1.0)
    coefficient = jnp.where(angle > 0, (1.0 - 0.5 * safe / jnp.tan(0.5 * safe)) / safe**2, 1.0 / 12.0)
    cross = jnp.cross(theta, omega)
    return omega + 0.5 * cross + coefficient * jnp.cross(theta, cross)


_RK4_STAGE = np.array([0.0, 0.5, 0.5, 1.0])  # stage i evaluates x0 + A(i) h k(i-1): RK4's diagonal tableau
_RK4_WEIGHT = np.array([1.0, 2.0, 2.0, 1.0]) / 6.0


def _rk4(model: mjx.Model, data: mjx.Data) -> mjx.Data:
    """One RK4 physics step as MuJoCo 4's mj_step does it (mj_RungeKutta with N = 4).

    ``mjx.step`` traces ``mjx.forward`` once per stage; here the four stages run in a ``lax.scan`` over one traced
    forward, which cuts the XLA compile time by more than half. Positions advance by stage rates ``k``: the
    velocities, with free-joint rotations' rates mapped through :func:`_dexpinv`. Like MuJoCo, the data keep the
    last stage's kinematics, contacts and accelerations, and the last stage's ``qacc`` warm-starts the next solve.
    """
    h = model.opt.timestep
    qpos0, qvel0, time0 = data.qpos, data.qvel, data.time
    rotations = [int(vadr) + 3 for jnt_type, vadr in zip(model.jnt_type, model.jnt_dofadr)
                 if jnt_type == mujoco.mjtJoint.mjJNT_FREE]

    def rates(qvel: jax.Array, offset: jax.Array) -> jax.Array:
        for adr in rotations:
            qvel = qvel.at[adr:adr + 3].set(_dexpinv(offset[adr:adr + 3], qvel[adr:adr + 3]))
        return qvel

    def stage(carry, coefficients):
        data, k, kqacc, sum_k, sum_qacc = carry
        a, b = coefficients
        # Stage 0 evaluates the state itself: keep its qpos bit for bit (integrating would renormalise quaternions).
        qpos = jnp.where(a > 0, _integrate_pos(model, qpos0, a * k, h), qpos0)
        data = mjx.forward(model, data.replace(qpos=qpos, qvel=qvel0 + (a * h) * kqacc, time=time0 + a * h))
        k = rates(data.qvel, (a * h) * k)
        return (data, k, data.qacc, sum_k + b * k, sum_qacc + b * data.qacc), None

    zeros = jnp.zeros_like(qvel0)
    coefficients = (jnp.asarray(_RK4_STAGE, h.dtype), jnp.asarray(_RK4_WEIGHT, h.dtype))
    (data, _, _, sum_k, sum_qacc), _ = jax.lax.scan(stage, (data, zeros, zeros, zeros, zeros), coefficients)
    return data.replace(qpos=_integrate_pos(model, qpos0, sum_k, h), qvel=qvel0 + h * sum_qacc,
                        time=time0 + h, qacc_warmstart=data.qacc)


def _cfrc_ext(data: mjx.Data) -> jax.Array:
    # MJX 3.17 keeps cfrc_ext among its JAX implementation's fields (Data.cfrc_ext is deprecated).
    return data._impl.cfrc_ext


def _jit(fn: Callable, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fn)``, built at the first call once JAX knows its backend. On CPU, XLA's fusion emitters are
    off: with them, compiling Hopper's step takes ~1.5x the CPU time (17 s vs 11 s on this project's 2-core
    machine) and its steps ran no faster."""
    @functools.cache
    def compiled() -> Callable:
        options = {"xla_cpu_use_fusion_emitters": False} if jax.default_backend() == "cpu" else None
        return jax.jit(fn, compiler_options=options, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return compiled()(*args, **kwargs)
    return call


def _restart(family: str, tail: str, state: _State, qpos: jax.Array, qvel: jax.Array,
             restart: jax.Array) -> tuple[_State, jax.Array]:
    """``state`` with a new episode from ``(qpos, qvel)`` where ``restart``, and that episode's observation.

    A new episode needs only positions, velocities, a cleared warm start and zero time: the next step's forward
    pass recomputes everything else. Its observation has zero contact forces, as after gymnasium's reset
    (mj_forward does not compute cfrc_ext). The rewarded x starts at ``qpos[0]`` in every family: the slide
    joint rootx, or Ant's free joint, which places the torso at ``qpos[:3]``.
    """
    def pick(new, old):
        return jnp.where(restart, new, old)

    data = state.data
    data = data.replace(qpos=pick(qpos, data.qpos), qvel=pick(qvel, data.qvel),
                        qacc_warmstart=pick(0.0, data.qacc_warmstart), time=pick(0.0, data.time))
    state = _State(data, pick(qpos[0], state.x_position), pick(0, state.steps), state.key)
    return state, _observe(family, tail, qpos, qvel, jnp.zeros_like(_cfrc_ext(data)))


def _env_step(family: str, tail: str, model: mjx.Model, rules: _Rules, state: _State,
              action: jax.Array) -> tuple[_State, tuple[jax.Array, ...]]:
    """One env step of one env (vmapped over the batch), auto-reset included."""
    spec = _FAMILIES[family]
    data = state.data.replace(ctrl=action.astype(state.data.ctrl.dtype))
    physics_step = _rk4 if model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4 else mjx.step
    data = jax.lax.fori_loop(0, spec.frame_skip, lambda _, d: physics_step(model, d), data)
    if family == "ant":  # contact forces, as gymnasium's mj_rnePostConstraint after the frame-skip loop
        data = mjx.rne_postconstraint(model, data)
    cfrc_ext = _cfrc_ext(data)

    # Ant's torso xpos holds the last RK4 stage's kinematics, as after MuJoCo's mj_step; the others read qpos[0].
    x_after = data.xpos[_ANT_MAIN_BODY, 0] if family == "ant" else data.qpos[0]
    x_velocity = (x_after - state.x_position) / (spec.frame_skip * model.opt.timestep)
    healthy = _is_healthy(family, data.qpos, data.qvel)
    contact_cost = rules.contact_cost_weight * jnp.sum(jnp.square(jnp.clip(cfrc_ext, *_ANT_CONTACT_FORCE_RANGE)))
    reward = (x_velocity + jnp.where(healthy, spec.healthy_reward, rules.unhealthy_reward)
              - spec.ctrl_cost_weight * jnp.sum(jnp.square(action)) - contact_cost)
    terminated = ~healthy
    steps = state.steps + 1
    truncated = steps >= MAX_EPISODE_STEPS
    final_obs = _observe(family, tail, data.qpos, data.qvel, cfrc_ext)

    key, reset_key = jax.random.split(state.key)
    qpos_reset, qvel_reset = _reset_sample(family, model, reset_key)
    done = terminated | truncated
    state, reset_obs = _restart(family, tail, _State(data, x_after, steps, key), qpos_reset, qvel_reset, done)
    obs = jnp.where(done, reset_obs, final_obs)
    return state, (obs, reward.astype(jnp.float32), terminated, truncated, final_obs)


@functools.partial(_jit, static_argnames=("family", "tail"))
def _step_batch(model: mjx.Model, rules: _Rules, state: _State, actions: jax.Array, family: str, tail: str):
    """All B envs one step; compiled once per (family, observation tail, B, precision): the model and the
    version's rules are arguments, so Walker2d-v4's and -v5's models share the compilation."""
    step = functools.partial(_env_step, family, tail)
    return jax.vmap(step, in_axes=(None, None, 0, 0))(model, rules, state, actions)


@functools.partial(_jit, static_argnames=("family", "tail"))
def _restart_batch(state: _State, qpos: jax.Array, qvel: jax.Array, family: str, tail: str):
    restart = functools.partial(_restart, family, tail, restart=jnp.array(True))
    return jax.vmap(restart)(state, qpos, qvel)


@functools.partial(_jit, static_argnames=("family",))
def _sample_batch(model: mjx.Model, keys: jax.Array, family: str):
    """Next keys and reset-noise states for B envs."""
    def sample(key):
        key, sample_key = jax.random.split(key)
        return (key, *_reset_sample(family, model, sample_key))
    return jax.vmap(sample)(keys)


def _contact_tail(family: str, version: str, ant_obs: str) -> str:
    """The observation's tail after qpos and qvel: nothing, D4RL's 84 zeros, or clipped cfrc_ext of all 14 bodies
    (v4) or without the world body (v5)."""
    if family != "ant" or ant_obs == "plain":
        return "none"
    if ant_obs == "d4rl":
        return "zeros"
    return "all_bodies" if version == "v4" else "without_world"


class MJXVecEnv(VecEnv):
    """B envs of one task on MJX, stepped by one compiled call; see the module docstring for the rules.

    ``precision="float64"`` simulates in double precision (as MuJoCo's C engine does; slow on GPUs), for checking
    against gymnasium; observations and rewards are float32 either way.
    """

    def __init__(self, family: str, num_envs: int, version: str = "v5", seed: int | Sequence[int] = 0,
                 ant_obs: str = "d4rl", precision: str = "float32"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid options: {', '.join(PRECISIONS)}")
        gym_env = envs.make_env(family, version, ant_obs=ant_obs)  # checks family, version and ant_obs
        mj_model = gym_env.unwrapped.model  # type: ignore[attr-defined]
        gym_env.close()
        joint_types = mujoco.mjtJoint
        supported = {int(joint_types.mjJNT_FREE), int(joint_types.mjJNT_HINGE), int(joint_types.mjJNT_SLIDE)}
        unsupported = {int(t) for t in mj_model.jnt_type} - supported
        if unsupported:
            raise ValueError(f"{family}: joint types {sorted(unsupported)} have no position integration here")
        self.family = family
        self.num_envs = num_envs
        self.obs_dim, self.act_dim = envs.env_dims(family, version, ant_obs)
        self.nq, self.nv = mj_model.nq, mj_model.nv
        self._tail = _contact_tail(family, version, ant_obs)
        self._x64 = precision == "float64"
        healthy_reward = _FAMILIES[family].healthy_reward
        contact_cost = family == "ant" and (version == "v5" or ant_obs == "contact")
        with self._precision():
            self._model = mjx.put_model(mj_model)
            self._rules = _Rules(jnp.asarray(healthy_reward if version == "v4" else 0.0),
                                 jnp.asarray(_ANT_CONTACT_COST_WEIGHT if contact_cost else 0.0))
            data = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_envs, *x.shape)), mjx.make_data(self._model))
            self._state = _State(data, jnp.zeros(num_envs, data.qpos.dtype), jnp.zeros(num_envs, jnp.int32),
                                 self._keys(seed))
            self._jax_device = data.qpos.devices().pop()
            self.device = torch.from_dlpack(jnp.zeros(1)).device
        self._started = False

    def _precision(self):
        """JAX's x64 switch for every call: it decides the dtype of arrays and the compiled code."""
        return jax.enable_x64(self._x64)

    def _keys(self, seed: int | Sequence[int]) -> jax.Array:
        """Per-env PRNG keys: env i of ``seed`` is ``split(key(seed), B)[i]``; with one seed per env, env i is what a
        one-env batch of ``seed[i]`` has, so each row of a seed-batched run continues its one-seed run's stream."""
        if isinstance(seed, int):
            return jax.random.split(jax.random.key(seed), self.num_envs)
        if len(seed) != self.num_envs:
            raise ValueError(f"{len(seed)} seeds for {self.num_envs} envs")
        return jnp.concatenate([jax.random.split(jax.random.key(s), 1) for s in seed])

    def _to_torch(self, array: jax.Array) -> torch.Tensor:
        return torch.from_dlpack(array)

    def _from_torch(self, tensor: torch.Tensor, dtype: torch.dtype) -> jax.Array:
        return jax.dlpack.from_dlpack(tensor.detach().to(dtype).contiguous(), device=self._jax_device)

    def reset(self, seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """All envs start a new episode; ``seed`` (one, or one per env: see ``_keys``) restarts the noise streams."""
        with self._precision():
            keys = self._state.key if seed is None else self._keys(seed)
            keys, qpos, qvel = _sample_batch(self._model, keys, self.family)
            self._state, obs = _restart_batch(self._state._replace(key=keys), qpos, qvel, self.family, self._tail)
        self._started = True
        return self._to_torch(obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        self._check_batch("actions", actions, self.act_dim)
        if not self._started:
            raise RuntimeError("MJXVecEnv.step() before reset() or set_state()")
        with self._precision():
            self._state, outputs = _step_batch(self._model, self._rules, self._state,
                                               self._from_torch(actions, torch.float32), self.family, self._tail)
        return StepResult(*(self._to_torch(x) for x in outputs))

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        self._check_batch("qpos", qpos, self.nq)
        self._check_batch("qvel", qvel, self.nv)
        with self._precision():
            dtype = torch.float64 if self._x64 else torch.float32
            self._state, obs = _restart_batch(self._state, self._from_torch(qpos, dtype),
                                              self._from_torch(qvel, dtype), self.family, self._tail)
        self._started = True
        return self._to_torch(obs)

    def get_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = self._state.data
        return self._to_torch(data.qpos).clone(), self._to_torch(data.qvel).clone()


    def state_dict(self, rows: slice = slice(None)) -> dict[str, Any]:
        """Everything a resumed run needs to continue these envs (or the envs ``rows``) exactly: physics, episode
        steps, PRNG keys. Row i's state is the state of a one-env batch."""
        state = self._state._replace(key=jax.random.key_data(self._state.key))
        return {"leaves": [np.asarray(leaf[rows]) for leaf in jax.tree.leaves(state)], "started": self._started}

    def load_state_dict(self, state: dict[str, Any], rows: slice = slice(None)) -> None:
        """Restore every env, or the envs ``rows`` from their :meth:`state_dict`."""
        with self._precision():
            template = self._state._replace(key=jax.random.key_data(self._state.key))
            leaves = jax.tree.leaves(template)
            if len(state["leaves"]) != len(leaves) or any(
                    saved.shape != leaf[rows].shape for saved, leaf in zip(state["leaves"], leaves)):
                raise ValueError(f"MJX env state of another shape than rows {rows} of this {self.family} x "
                                 f"{self.num_envs}")
            restored = [leaf.at[rows].set(jax.device_put(saved, self._jax_device))
                        for saved, leaf in zip(state["leaves"], leaves)]
            restored = jax.tree.unflatten(jax.tree.structure(template), restored)
            self._state = restored._replace(key=jax.random.wrap_key_data(restored.key))
        self._started = state["started"]


class MJXSeedEnvs:
    """MJX envs in one batch, each with gymnasium's episode semantics and numpy in and out, and its own seed: under
    ``--env-backend mjx`` the online envs (one per seed of a run; row i continues exactly as a one-env batch of
    ``seeds[i]``) and the evaluation envs (one per episode of every seed).

    MJX restarts an env inside the step that ends its episode; :meth:`next_episode` hands out that new episode's
    first observation, so the episodes follow the env's own PRNG stream as gymnasium's follow its ``np_random``.
    """

    def __init__(self, family: str, version: str = "v5", seeds: Sequence[int] = (0,), precision: str = "float32"):
        self._vec = MJXVecEnv(family, len(seeds), version, list(seeds), precision=precision)
        self._restarted: list[np.ndarray | None] = [None] * len(seeds)
        """Per env: first observation of the episode the last step's auto-reset began; None when none ended."""

    def reset(self, seeds: Sequence[int] | None = None) -> list[np.ndarray]:
        """Every env starts a new episode; ``seeds`` (one per env) restarts their noise streams."""
        obs = self._vec.reset(None if seeds is None else list(seeds)).cpu().numpy()
        self._restarted = [None] * len(self._restarted)
        return list(obs)

    def next_episode(self, row: int) -> np.ndarray:
        """The first observation of env ``row``'s episode after the one that ended (its auto-reset)."""
        obs = self._restarted[row]
        if obs is None:
            raise RuntimeError(f"MJX env {row}: no episode has ended since the last reset")
        self._restarted[row] = None
        return obs

    def step(self, actions: np.ndarray) -> list[tuple[np.ndarray, float, bool, bool]]:
        """Step every env with its row of ``actions``; per env (obs, reward, terminated, truncated), the obs being
        the episode's final one where it ended."""
        result = self._vec.step(torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self._vec.device))
        obs, final_obs, reward, terminated, truncated = (
            x.cpu().numpy() for x in (result.obs, result.final_obs, result.reward, result.terminated,
                                      result.truncated))
        steps = []
        for row in range(len(self._restarted)):
            ended = bool(terminated[row]) or bool(truncated[row])
            if ended:
                self._restarted[row] = obs[row]
            steps.append((final_obs[row], float(reward[row]), bool(terminated[row]), bool(truncated[row])))
        return steps

    def state_dict(self, row: int) -> dict[str, Any]:
        """Env ``row``'s state, which a one-env batch also loads (a seed resumed on its own)."""
        return {"vec": self._vec.state_dict(slice(row, row + 1)), "restarted": self._restarted[row]}

    def load_state_dict(self, row: int, state: dict[str, Any]) -> None:
        self._vec.load_state_dict(state["vec"], slice(row, row + 1))
        self._restarted[row] = state["restarted"]

    def close(self) -> None:
        self._vec.close()


def make_vec_env(family: str, num_envs: int, backend: str = "gymnasium", version: str = "v5", seed: int = 0,
                 ant_obs: str = "d4rl") -> VecEnv:
    """B envs of ``family`` on ``backend`` (``gymnasium``: CPU, the reference; ``mjx``: JAX's default device)."""
    if backend == "gymnasium":
        return GymVecEnv(family, num_envs, version, seed, ant_obs)
    if backend == "mjx":
        return MJXVecEnv(family, num_envs, version, seed, ant_obs)
    raise ValueError(f"unknown env backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
