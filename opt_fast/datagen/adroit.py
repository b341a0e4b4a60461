"""D4RL's Adroit datasets rebuilt from the DAPG release, and the DAPG policies (the envs: :mod:`opt_fast.envs.adroit`).

Every dataset records the installed gymnasium-robotics version (``metadata/gymnasium_robotics``): door, hammer and
relocate rewards changed between its releases without a version bump.

The DAPG release (aravindr93/hand_dapg, as ``.npz``) comes from a directory the user names
(``opt-fast ... --adroit-data DIR``): ``dapg_<task>_policy.npz`` and ``door_human_demos.npz``. Datasets, in D4RL's
hdf5 layout (``infos/<env state>`` per row, ``timeouts`` on every episode's last row, no terminals):

- ``<task>-expert``: episodes of the DAPG policy with sampled actions clipped to [-1, 1], as D4RL.
- ``door-human``: the 25 demonstrations replayed in the env from their initial states (actions clipped to
  [-1, 1]), so observations and rewards are the installed env's.
- ``door-cloned``: a behaviour-cloning policy trained on door-human (a Gaussian MLP with the DAPG policy's
  hidden sizes, fitted by maximum likelihood) rolled out with sampled actions, followed by the demonstrations
  tiled to as many episodes as the rollouts, D4RL's 50-50 recipe.

Pen, hammer and relocate human/cloned need demonstrations that are not in the release here: asking for them
raises an error saying how to bring D4RL's or Minari's files.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from opt_fast.data.d4rl import write_d4rl_hdf5
from opt_fast.data.names import ADROIT_FAMILIES, parse_dataset_name
from opt_fast.data.scores import normalized_score
from opt_fast.envs.adroit import HORIZONS, make_env
from opt_fast.progress import progress_bar
from opt_fast.provenance import gymnasium_robotics_version

DEMOS_FILE = "door_human_demos.npz"
_DEMO_KEYS = ("actions", "episode_lengths", "init_qpos", "init_qvel", "init_door_body_pos")
_POLICY_KEYS = ("in_shift", "in_scale", "out_shift", "out_scale", "log_std", "n_layers")


def policy_file(task: str) -> str:
    return f"dapg_{task}_policy.npz"


# ---------------------------------------------------------------------------------------------------- policies
@dataclass
class GaussianMLPPolicy:
    """DAPG's policy form: x = (o - in_shift) / (in_scale + 1e-8), tanh hidden layers, a linear output layer
    scaled by ``out_scale`` and shifted by ``out_shift``, state-independent ``log_std``. Weights are [out, in]."""

    in_shift: np.ndarray
    in_scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    out_shift: np.ndarray
    out_scale: np.ndarray
    log_std: np.ndarray

    @classmethod
    def from_npz(cls, path: str | Path) -> "GaussianMLPPolicy":
        """Read a ``dapg_<task>_policy.npz``; a missing file or key raises naming the file and what it holds."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no DAPG policy file at {path}; pass the directory of the DAPG release "
                                    f"(dapg_<task>_policy.npz, door_human_demos.npz) with --adroit-data DIR")
        with np.load(path) as data:
            n_layers = int(data["n_layers"]) if "n_layers" in data.files else 0
            keys = (*_POLICY_KEYS, *(f"{p}{i}" for i in range(n_layers) for p in ("W", "b")))
            missing = [key for key in keys if key not in data.files]
            if missing:
                raise ValueError(f"{path}: missing keys {missing}; a DAPG policy file holds {', '.join(_POLICY_KEYS)} "
                                 f"and W0, b0 ... W<n_layers-1>, b<n_layers-1>")
            policy = cls(data["in_shift"], data["in_scale"], [data[f"W{i}"] for i in range(n_layers)],
                         [data[f"b{i}"] for i in range(n_layers)], data["out_shift"], data["out_scale"],
                         data["log_std"])
        policy.check(str(path))
        return policy

    def check(self, where: str) -> None:
        """Layer sizes chain from the observation to the action size, and every value is finite."""
        sizes = [len(self.in_shift)] + [len(b) for b in self.biases]
        for i, weight in enumerate(self.weights):
            if weight.shape != (sizes[i + 1], sizes[i]):
                raise ValueError(f"{where}: W{i} has shape {weight.shape}, expected {(sizes[i + 1], sizes[i])}")
        for name in ("out_shift", "out_scale", "log_std"):
            if getattr(self, name).shape != (sizes[-1],):
                raise ValueError(f"{where}: {name} has shape {getattr(self, name).shape}, expected ({sizes[-1]},)")
        arrays = [self.in_shift, self.in_scale, self.out_shift, self.out_scale, self.log_std, *self.weights,
                  *self.biases]
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError(f"{where}: the policy has NaN or inf parameters")

    @property
    def obs_dim(self) -> int:
        return len(self.in_shift)

    @property
    def act_dim(self) -> int:
        return len(self.out_shift)

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """Mean action for one observation [obs] or a batch [B, obs]."""
        x = (np.asarray(obs, dtype=np.float64) - self.in_shift) / (self.in_scale + 1e-8)
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            x = np.tanh(x @ weight.T + bias)
        return (x @ self.weights[-1].T + self.biases[-1]) * self.out_scale + self.out_shift

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """mean + exp(log_std) * N(0, I), clipped to the action space [-1, 1], as D4RL sampled its expert data."""
        mean = self.mean(obs)
        return np.clip(mean + np.exp(self.log_std) * rng.standard_normal(mean.shape), -1.0, 1.0)


# ---------------------------------------------------------------------------------------------------- episodes
@dataclass
class Episodes:
    """Rows of whole episodes in D4RL's layout (plus ``infos/<key>`` env states), built episode by episode."""

    rows: dict[str, list[np.ndarray]]

    @classmethod
    def empty(cls) -> "Episodes":
        return cls({})

    def add(self, episode: dict[str, np.ndarray]) -> None:
        for key, value in episode.items():
            self.rows.setdefault(key, []).append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {key: np.concatenate(parts) for key, parts in self.rows.items()}
        for key in ("observations", "actions", "rewards"):
            arrays[key] = arrays[key].astype(np.float32)
        return arrays


def _state_row(env: gym.Env) -> dict[str, np.ndarray]:
    return {f"infos/{key}": np.asarray(value, dtype=np.float64)
            for key, value in env.unwrapped.get_env_state().items()}  # type: ignore[attr-defined]


def run_episode(env: gym.Env, policy: Callable[[np.ndarray, int], np.ndarray], steps: int,
                reset: dict[str, Any]) -> dict[str, np.ndarray]:
    """One episode of ``steps`` env steps from ``env.reset(**reset)``; ``policy(obs, t)`` gives action t.

    Rows hold the observation before each step, the action clipped to [-1, 1] as the env applies it, the reward,
    ``terminals`` False (no Adroit task terminates) and ``timeouts`` on the last row.
    """
    obs, _ = env.reset(**reset)
    columns: dict[str, list] = {"observations": [], "actions": [], "rewards": []}
    states: list[dict[str, np.ndarray]] = []
    for t in range(steps):
        action = np.clip(policy(obs, t), -1.0, 1.0)
        columns["observations"].append(obs)
        columns["actions"].append(action)
        states.append(_state_row(env))
        obs, reward, _, _, _ = env.step(action)
        columns["rewards"].append(reward)
    episode = {key: np.asarray(value) for key, value in columns.items()}
    episode.update({key: np.stack([s[key] for s in states]) for key in states[0]})
    episode["terminals"] = np.zeros(steps, dtype=bool)
    episode["timeouts"] = np.arange(steps) == steps - 1
    return episode


def policy_rollouts(task: str, policy: GaussianMLPPolicy, episodes: int, seed: int, label: str) -> Episodes:
    """``episodes`` D4RL-horizon episodes of ``policy`` with sampled actions; episode i resets with seed + i."""
    env = make_env(task)
    rng = np.random.default_rng(seed)
    out = Episodes.empty()
    with progress_bar(label, episodes, unit="episode") as bar:
        for i in range(episodes):
            out.add(run_episode(env, lambda obs, t: policy.sample(obs, rng), HORIZONS[task], {"seed": seed + i}))
            bar.update()
    env.close()
    return out


@dataclass(frozen=True)
class Demos:
    """The door demonstrations of the DAPG release: actions and per-episode initial states (the replay makes the
    observations and rewards anew in the installed env)."""

    actions: np.ndarray
    episode_lengths: np.ndarray
    init_qpos: np.ndarray
    init_qvel: np.ndarray
    init_door_body_pos: np.ndarray

    @classmethod
    def from_npz(cls, path: str | Path) -> "Demos":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no door demonstrations at {path}; pass the directory of the DAPG release "
                                    f"holding {DEMOS_FILE} with --adroit-data DIR")
        with np.load(path) as data:
            missing = [key for key in _DEMO_KEYS if key not in data.files]
            if missing:
                raise ValueError(f"{path}: missing keys {missing}; expected {', '.join(_DEMO_KEYS)}")
            demos = cls(**{key: data[key] for key in _DEMO_KEYS})
        if int(demos.episode_lengths.sum()) != len(demos.actions):
            raise ValueError(f"{path}: episode_lengths sum to {int(demos.episode_lengths.sum())} but there are "
                             f"{len(demos.actions)} actions")
        for key in ("actions", "init_qpos", "init_qvel", "init_door_body_pos"):
            if not np.isfinite(getattr(demos, key)).all():
                raise ValueError(f"{path}: key '{key}' has NaN or inf values")
        return demos

    def episode_actions(self) -> list[np.ndarray]:
        return np.split(self.actions, np.cumsum(self.episode_lengths)[:-1])


def replay_demos(demos: Demos) -> Episodes:
    """The door demonstrations replayed from their initial states, each to its full length (D4RL kept the
    demonstrations whole, up to 300 steps, longer than the 200-step horizon: the replay runs below the time limit)."""
    env: gym.Env = make_env("door")
    while not isinstance(env, gym.wrappers.TimeLimit):
        env = env.env  # type: ignore[attr-defined]
    out = Episodes.empty()
    for i, actions in enumerate(demos.episode_actions()):
        state = {"qpos": demos.init_qpos[i], "qvel": demos.init_qvel[i], "door_body_pos": demos.init_door_body_pos[i]}
        reset = {"seed": i, "options": {"initial_state_dict": state}}
        # The default binds this episode's actions (mypy cannot type such a lambda).
        out.add(run_episode(env.env, lambda obs, t, actions=actions: actions[t],  # type: ignore[misc]
                            len(actions), reset))
    env.close()
    return out


def fit_behaviour_cloning(
    observations: np.ndarray, actions: np.ndarray, hidden: list[int], steps: int, seed: int, batch_size: int = 256,
    lr: float = 1e-3,
) -> GaussianMLPPolicy:
    """A Gaussian MLP policy (tanh hidden layers, state-independent log-std) fitted to (obs, action) pairs by
    maximum likelihood with Adam; inputs are standardised with the data's mean and std as DAPG's ``in_shift``
    and ``in_scale``."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [observations.shape[1], *hidden, actions.shape[1]]
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        layers = [torch.nn.Linear(a, b, dtype=torch.float64) for a, b in zip(sizes[:-1], sizes[1:])]
    log_std = torch.nn.Parameter(torch.full((actions.shape[1],), -1.0, dtype=torch.float64))
    in_shift, in_scale = observations.mean(axis=0), observations.std(axis=0)
    obs = torch.as_tensor((observations - in_shift) / (in_scale + 1e-8), dtype=torch.float64)
    act = torch.as_tensor(actions, dtype=torch.float64)
    parameters = [p for layer in layers for p in layer.parameters()] + [log_std]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        index = torch.randint(len(obs), (min(batch_size, len(obs)),), generator=generator)
        x = obs[index]
        for layer in layers[:-1]:
            x = torch.tanh(layer(x))
        mean = layers[-1](x)
        # Gaussian negative log-likelihood up to a constant.
        loss = (0.5 * ((act[index] - mean) / log_std.exp()).pow(2) + log_std).sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return GaussianMLPPolicy(
            in_shift, in_scale, [layer.weight.numpy().copy() for layer in layers],
            [layer.bias.numpy().copy() for layer in layers], np.zeros(sizes[-1]), np.ones(sizes[-1]),
            log_std.numpy().copy())


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class AdroitBudget:
    expert_episodes: int
    """Episodes of ``*-expert`` (D4RL: 5000)."""
    cloned_episodes: int
    """Behaviour-cloning rollouts of ``door-cloned``; the demonstrations are tiled to as many episodes."""
    bc_steps: int
    """Adam steps (batch 256) of the behaviour-cloning fit."""


BUDGETS: dict[str, AdroitBudget] = {
    "paper": AdroitBudget(expert_episodes=5000, cloned_episodes=2500, bc_steps=20_000),
    "study": AdroitBudget(expert_episodes=5000, cloned_episodes=2500, bc_steps=20_000),  # the paper's data
    "quick": AdroitBudget(expert_episodes=200, cloned_episodes=100, bc_steps=5_000),
    "smoke": AdroitBudget(expert_episodes=3, cloned_episodes=3, bc_steps=50),
}
GENERATABLE = ("door-human", "door-cloned", *(f"{task}-expert" for task in ADROIT_FAMILIES))


def unavailable_message(dataset_id: str) -> str:
    """Why a pen/hammer/relocate human or cloned dataset cannot be made here, and how to bring the real one."""
    name = parse_dataset_name(dataset_id)
    return (f"{name.d4rl_id} cannot be generated here: it needs the {name.family} human demonstrations of the DAPG "
            f"release, which are not available (only door's are). Bring the real data instead: put D4RL's "
            f"{name.d4rl_filename} in $D4RL_DATASET_DIR or pass --dataset PATH, or use Minari's copy with --env "
            f"minari:D4RL/{name.family}/{name.kind}-v2. Adroit datasets made here: "
            f"{', '.join(GENERATABLE)}")


def build_dataset(dataset_id: str, data_dir: str | Path, seed: int = 0,
                  budget: str | AdroitBudget = "quick") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The rows and metadata of an Adroit dataset (see the module docstring for each recipe)."""
    name = parse_dataset_name(dataset_id)
    if name.family not in ADROIT_FAMILIES:
        raise ValueError(f"{name.d4rl_id} is not an Adroit dataset ({', '.join(ADROIT_FAMILIES)})")
    if f"{name.family}-{name.kind}" not in GENERATABLE:
        raise ValueError(unavailable_message(name.d4rl_id))
    sizes = budget if isinstance(budget, AdroitBudget) else BUDGETS[budget]
    data_dir = Path(data_dir).expanduser()
    metadata: dict[str, Any] = {"recipe": name.kind}
    if name.kind == "expert":
        policy = GaussianMLPPolicy.from_npz(data_dir / policy_file(name.family))
        arrays = policy_rollouts(name.family, policy, sizes.expert_episodes, seed, name.d4rl_id).arrays()
        metadata.update(episodes=sizes.expert_episodes, source=policy_file(name.family))
    else:
        demos = Demos.from_npz(data_dir / DEMOS_FILE)
        human = replay_demos(demos).arrays()
        metadata["source"] = DEMOS_FILE
        if name.kind == "human":
            arrays = human
        else:
            hidden = [len(b) for b in GaussianMLPPolicy.from_npz(data_dir / policy_file("door")).biases[:-1]]
            clone = fit_behaviour_cloning(human["observations"], human["actions"], hidden, sizes.bc_steps, seed)
            rollouts = policy_rollouts("door", clone, sizes.cloned_episodes, seed, f"{name.d4rl_id} rollouts").arrays()
            copies = max(1, math.ceil(sizes.cloned_episodes / len(demos.episode_lengths)))
            arrays = {key: np.concatenate([rollouts[key], *([human[key]] * copies)]) for key in rollouts}
            metadata.update(bc_episodes=sizes.cloned_episodes, demo_copies=copies, bc_steps=sizes.bc_steps,
                            bc_hidden=np.asarray(hidden))
    return arrays, metadata


def generate(dataset_id: str, out_dir: str | Path, data_dir: str | Path | None, seed: int = 0,
             budget: str | AdroitBudget = "quick") -> Path:
    """Write ``<out_dir>/<D4RL file name>`` (e.g. ``door-cloned-v1.hdf5``) and return its path.

    ``data_dir`` is the directory of the DAPG release; metadata records the dataset id, the recipe and budget,
    the generator and the gymnasium-robotics version.
    """

    name = parse_dataset_name(dataset_id)
    if data_dir is None:
        raise ValueError(f"{name.d4rl_id} is made from the DAPG release: pass its directory with --adroit-data DIR "
                         f"(dapg_<task>_policy.npz, {DEMOS_FILE})")
    arrays, metadata = build_dataset(name.d4rl_id, data_dir, seed, budget)
    returns = np.add.reduceat(arrays["rewards"].astype(np.float64),
                              np.concatenate(([0], np.flatnonzero(arrays["timeouts"])[:-1] + 1)))
    metadata.update(dataset=name.d4rl_id, generator="opt_fast.adroit", seed=seed,
                    budget=budget if isinstance(budget, str) else repr(budget),
                    gymnasium_robotics=gymnasium_robotics_version(),
                    normalized_return_mean=float(normalized_score(name.family, returns.mean())))
    path = Path(out_dir) / name.d4rl_filename
    write_d4rl_hdf5(path, arrays, metadata)
    print(f"{name.d4rl_id}: {len(arrays['rewards']):,} rows, {len(returns)} episodes, return mean "
          f"{returns.mean():.1f}, D4RL-normalised {metadata['normalized_return_mean']:.1f} -> {path}")
    return path
