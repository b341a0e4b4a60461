"""TD3+BC and OPT's fine-tuning update in JAX, each one jitted XLA program: a benchmark side that shows the fastest
CPU implementation of this math that the installed stack offers (XLA fuses the whole update, elementwise work and
Adam included).

Written from the equations of docs/method.md §3 with opt_fast's layout (ensembles as batched weights
``[E, in, out]``, twin critics stacked, Q_off and Q_on as one E = 4 ensemble) and nn.Linear's initialisation; no
replay here: the benchmark hands both sides the same batches. Adam is written out (as torch's: bias-corrected, eps
outside the square root). The first-order parts are checked against opt_fast in ``test_bench_jax.py``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from opt_fast.config import Config

Params = list[tuple[jax.Array, jax.Array]]  # per layer: weight [E, in, out], bias [E, 1, out]


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array


def init_mlp(key: jax.Array, n_members: int, widths: Sequence[int]) -> Params:
    """nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        key, k_w, k_b = jax.random.split(key, 3)
        bound = 1.0 / math.sqrt(fan_in)
        params.append((jax.random.uniform(k_w, (n_members, fan_in, fan_out), minval=-bound, maxval=bound),
                       jax.random.uniform(k_b, (n_members, 1, fan_out), minval=-bound, maxval=bound)))
    return params


def mlp(params: Params, x: jax.Array) -> jax.Array:
    """``x`` [B, in] (every member) or [E, B, in] -> [E, B, out], ReLU between layers."""
    for i, (weight, bias) in enumerate(params):
        x = jnp.matmul(x, weight) + bias
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def members(params: Params, index: slice) -> Params:
    return [(w[index], b[index]) for w, b in params]


def q_values(params: Params, obs: jax.Array, action: jax.Array) -> jax.Array:
    """[E, B] for a batch of (obs, action) shared by every member."""
    return mlp(params, jnp.concatenate([obs, action], axis=-1))[..., 0]


def actor(params: Params, obs: jax.Array) -> jax.Array:
    return jnp.tanh(mlp(params, obs)[0])


def td_target(critic_target: Params, actor_target: Params, batch: Batch, key: jax.Array, config: Config) -> jax.Array:
    """y per twin pair [n_twins, B] with target-policy smoothing; the twin pairs are consecutive members."""
    noise = jnp.clip(jax.random.normal(key, batch.action.shape) * config.policy_noise, -config.noise_clip,
                     config.noise_clip)
    next_action = jnp.clip(actor(actor_target, batch.next_obs) + noise, -1.0, 1.0)
    next_q = q_values(critic_target, batch.next_obs, next_action).reshape(-1, 2, batch.reward.shape[0]).min(axis=1)
    return jax.lax.stop_gradient(batch.reward + config.gamma * (1.0 - batch.done) * next_q)


def td_loss(critic: Params, batch: Batch, target: jax.Array) -> jax.Array:
    """sum over twin pairs and heads of E[(Q_j - y)^2]."""
    q = q_values(critic, batch.obs, batch.action).reshape(target.shape[0], 2, -1)
    return ((q - target[:, None]) ** 2).mean(axis=-1).sum()


# ------------------------------------------------------------------------------------------ Adam and Polyak
def adam_init(params: Any) -> dict[str, Any]:
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"m": zeros, "v": zeros, "t": jnp.zeros((), jnp.int32)}


def adam_step(params: Any, grads: Any, state: dict[str, Any], lr: float, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> tuple[Any, dict[str, Any]]:
    t = state["t"] + 1
    m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    correction1, correction2 = 1 - b1 ** t, jnp.sqrt(1 - b2 ** t)
    params = jax.tree_util.tree_map(lambda p, m, v: p - lr / correction1 * m / (jnp.sqrt(v) / correction2 + eps),
                                    params, m, v)
    return params, {"m": m, "v": v, "t": t}


def polyak(target: Any, source: Any, tau: float) -> Any:
    return jax.tree_util.tree_map(lambda t, s: t + tau * (s - t), target, source)


# ------------------------------------------------------------------------------------------ TD3+BC
def td3_bc_init(key: jax.Array, obs_dim: int, act_dim: int, config: Config) -> dict[str, Any]:
    k_actor, k_critic = jax.random.split(key)
    hidden = tuple(config.hidden)
    actor_params = init_mlp(k_actor, 1, (obs_dim, *hidden, act_dim))
    critic_params = init_mlp(k_critic, 2, (obs_dim + act_dim, *hidden, 1))
    return {"actor": actor_params, "critic": critic_params, "actor_target": actor_params,
            "critic_target": critic_params, "actor_opt": adam_init(actor_params),
            "critic_opt": adam_init(critic_params)}


def td3_bc_cycle(config: Config):
    """One policy-delay cycle of TD3+BC (``config.policy_delay`` = 2 updates: critic, then critic + actor + Polyak),
    jitted: ``(state, batches [2, B, ...], key) -> (state, critic losses, actor loss)``."""

    def critic_step(state, batch, key):
        target = td_target(state["critic_target"], state["actor_target"], batch, key, config)
        loss, grads = jax.value_and_grad(td_loss)(state["critic"], batch, target)
        critic, opt = adam_step(state["critic"], grads, state["critic_opt"], config.critic_lr)
        return {**state, "critic": critic, "critic_opt": opt}, loss

    def actor_loss(actor_params, critic_params, batch):
        pi = actor(actor_params, batch.obs)
        q = q_values(members(critic_params, slice(0, 1)), batch.obs, pi)[0]
        lam = jax.lax.stop_gradient(config.bc_alpha / jnp.abs(q).mean())
        return -lam * q.mean() + ((pi - batch.action) ** 2).mean()

    def cycle(state, batches, key):
        k1, k2 = jax.random.split(key)
        first = Batch(*(x[0] for x in batches))
        second = Batch(*(x[1] for x in batches))
        state, loss1 = critic_step(state, first, k1)
        state, loss2 = critic_step(state, second, k2)
        a_loss, grads = jax.value_and_grad(actor_loss)(state["actor"], state["critic"], second)
        actor_params, opt = adam_step(state["actor"], grads, state["actor_opt"], config.actor_lr)
        state = {**state, "actor": actor_params, "actor_opt": opt,
                 "critic_target": polyak(state["critic_target"], state["critic"], config.tau),
                 "actor_target": polyak(state["actor_target"], actor_params, config.tau)}
        return state, jnp.stack([loss1, loss2]), a_loss

    return jax.jit(cycle)


# ------------------------------------------------------------------------------------------ OPT fine-tuning
def finetune_init(key: jax.Array, obs_dim: int, act_dim: int, config: Config) -> dict[str, Any]:
    k_base, k_on, k_density = jax.random.split(key, 3)
    state = td3_bc_init(k_base, obs_dim, act_dim, config)
    hidden = tuple(config.hidden)
    # Q_off's twins then Q_on's: one E = 4 critic, each pair with its own targets (stacked the same way).
    q_on = init_mlp(k_on, 2, (obs_dim + act_dim, *hidden, 1))
    critics = [(jnp.concatenate([w, w_on]), jnp.concatenate([b, b_on]))
               for (w, b), (w_on, b_on) in zip(state["critic"], q_on)]
    density = init_mlp(k_density, 1, (obs_dim + act_dim, *hidden, 1))
    return {**state, "critic": critics, "critic_target": critics, "critic_opt": adam_init(critics),
            "density": density, "density_opt": adam_init(density)}


def finetune_cycle(config: Config, kappa: float):
    """One policy-delay cycle of OPT's fine-tuning update (2 updates), jitted: each update steps the density-ratio
    net on an offline and an online batch, computes the prioritised batch's new priorities, and steps Q_off and Q_on
    (one E = 4 call); the second also steps the actor on the kappa-mixed critic and updates every target.
    ``(state, off, on, batch, key) -> (state, priorities [2, B])``, batches stacked [2, B, ...]."""
    log_eps, temperature = 1e-10, config.replay_temperature

    def density_loss(params, off, on):
        w_off = jax.nn.softplus(q_values(params, off.obs, off.action)[0])
        w_on = jax.nn.softplus(q_values(params, on.obs, on.action)[0])
        return (-jnp.log(2.0 / (w_off + 1.0) + log_eps).mean()
                - jnp.log(2.0 * w_on / (w_on + 1.0) + log_eps).mean())

    def update(state, off, on, batch, key):
        loss, grads = jax.value_and_grad(density_loss)(state["density"], off, on)
        density, density_opt = adam_step(state["density"], grads, state["density_opt"], config.density_lr)
        w_batch = jax.nn.softplus(q_values(density, batch.obs, batch.action)[0])
        w_off = jax.nn.softplus(q_values(density, off.obs, off.action)[0])
        priorities = jnp.clip(w_batch ** (1 / temperature) / (w_off ** (1 / temperature)).mean(), 1e-3, 1e3)
        target = td_target(state["critic_target"], state["actor_target"], batch, key, config)
        critic_loss, grads = jax.value_and_grad(td_loss)(state["critic"], batch, target)
        critic, critic_opt = adam_step(state["critic"], grads, state["critic_opt"], config.critic_lr)
        return {**state, "density": density, "density_opt": density_opt, "critic": critic,
                "critic_opt": critic_opt}, priorities

    def actor_loss(actor_params, critic_params, obs):
        pi = actor(actor_params, obs)
        q = q_values(members(critic_params, slice(0, None, 2)), obs, pi)  # Q_off_1, Q_on_1
        return -((1.0 - kappa) * q[0] + kappa * q[1]).mean()

    def cycle(state, off, on, batch, key):
        k1, k2 = jax.random.split(key)
        pick = lambda batches, i: Batch(*(x[i] for x in batches))  # noqa: E731
        state, p1 = update(state, pick(off, 0), pick(on, 0), pick(batch, 0), k1)
        state, p2 = update(state, pick(off, 1), pick(on, 1), pick(batch, 1), k2)
        _, grads = jax.value_and_grad(actor_loss)(state["actor"], jax.lax.stop_gradient(state["critic"]),
                                                  pick(batch, 1).obs)
        actor_params, opt = adam_step(state["actor"], grads, state["actor_opt"], config.actor_lr)
        state = {**state, "actor": actor_params, "actor_opt": opt,
                 "critic_target": polyak(state["critic_target"], state["critic"], config.tau),
                 "actor_target": polyak(state["actor_target"], actor_params, config.tau)}
        return state, jnp.stack([p1, p2])

    return jax.jit(cycle)


def stacked_batches(rng: np.random.Generator, n: int, batch_size: int, obs_dim: int, act_dim: int) -> Batch:
    """``n`` random batches stacked [n, B, ...] (throughput only)."""
    return Batch(jnp.asarray(rng.standard_normal((n, batch_size, obs_dim), dtype=np.float32)),
                 jnp.asarray(rng.uniform(-1, 1, (n, batch_size, act_dim)).astype(np.float32)),
                 jnp.asarray(rng.standard_normal((n, batch_size), dtype=np.float32)),
                 jnp.asarray(rng.standard_normal((n, batch_size, obs_dim), dtype=np.float32)),
                 jnp.asarray((rng.random((n, batch_size)) < 0.01).astype(np.float32)))
