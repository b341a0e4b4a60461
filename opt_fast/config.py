"""The run configuration: one typed dataclass, the paper's values as defaults (docs/method.md §4), presets per dataset
family (§3.4) and budgets that scale the protocol down for small machines."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from opt_fast.data.names import ADROIT_FAMILIES, ANTMAZE_FAMILY
from opt_fast.data.scores import ANTMAZE_REWARDS

if TYPE_CHECKING:
    from opt_fast.tasks import Task


@dataclass(frozen=True)
class Range:
    """The values a numeric Config field may take (``metadata["range"]``; for a tuple field, each entry's), checked
    by :func:`validate`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
UNIT_INTERVAL = Range(0, 1)

PHASE_FIELDS_ORDER = ("offline", "collect", "pretrain", "finetune")
ROLES = ("setting", "execution", "bookkeeping")


def setting(default: Any = dataclasses.MISSING, *, phase: str | None, bounds: Range | None = None,
            role: str = "setting", default_factory: Any = dataclasses.MISSING, hashed_at_default: bool = True) -> Any:
    """A Config field with what it is (its ``metadata``), from which the cache keys, the run's hash and validation
    are derived rather than listed:

    - ``phase``: the first phase whose result it determines. The fields of the offline phase are the key of the
      offline cache (:data:`OFFLINE_FIELDS`); those up to ``collect`` and ``pretrain`` the keys of the stored
      collection and pre-training prefixes; ``finetune`` = only the run's own end. None for bookkeeping.
    - ``bounds``: the :class:`Range` of a numeric field (each entry's for a tuple), checked by :func:`validate`.
    - ``role``: ``setting`` (what the run is), ``execution`` (where and how it runs: part of the run's hash, as it
      moves the last bits of float rounding, but not of what an experiment measures,
      :func:`opt_fast.ablate.setting_hash`) or ``bookkeeping`` (outside every hash and cache key).
    - ``hashed_at_default``: False for a field added after runs were kept, so that it enters the hashes (run
      directories, cache keys) only at another value than its default and every earlier run keeps its name.

    The help text of ``--help`` is the docstring under the field.
    """
    if phase not in (*PHASE_FIELDS_ORDER, None) or (phase is None) != (role == "bookkeeping") or role not in ROLES:
        raise ValueError(f"a Config field needs a phase unless it is bookkeeping; got phase={phase!r}, role={role!r}")
    metadata: dict[str, Any] = {"phase": phase, "role": role, "hashed_at_default": hashed_at_default}
    if bounds is not None:
        metadata["range"] = bounds
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass
class Config:
    # --- what to run -------------------------------------------------------------------------------------
    env: str = setting("hopper-random", phase="offline")
    """Dataset name as D4RL spells it (``walker2d-medium-replay``, ``door-cloned``, ``antmaze-umaze``; version
    optional), or a local Minari dataset as ``minari:<id>`` (``minari:D4RL/door/human-v2``)."""
    dataset: str | None = setting(None, phase="offline")
    """Explicit path to a D4RL-layout hdf5 file; otherwise ``$D4RL_DATASET_DIR`` then locally generated data."""
    env_version: str = setting("v5", phase="offline")
    """Gymnasium MuJoCo version of the online/evaluation env (v5 default; v4 selectable)."""
    seed: int = setting(0, phase="offline", bounds=NON_NEGATIVE)
    """Random seed of the networks, the buffers' sampling, the exploration noise and the envs."""
    seed_batch: tuple[int, ...] = setting((), phase="offline", bounds=NON_NEGATIVE, hashed_at_default=False)
    """The seeds trained with this one as a batch dimension in one process (``--seeds``), ``()`` for a run of its
    own. The batch shares one stream of torch noise, so a seed's result depends on its batch."""
    budget: str = setting("quick", phase="finetune")
    """Protocol size: ``paper`` (1M offline + 300k online), ``study`` (the CPU study), ``quick`` (the default job,
    ~30 min on 2 cores), ``cpu`` (committed results/cpu-budget), ``smoke`` (tests)."""
    opt: bool = setting(True, phase="collect")
    """OPT on; off gives the paper's baseline with the same backbone (TD3 or SPOT, same replay)."""
    backbone: str = setting("td3", phase="offline")
    """``td3`` (TD3+BC offline, TD3 online: MuJoCo) or ``spot`` (SPOT offline and online: AntMaze, Adroit)."""
    compile: bool = setting(False, phase=None, role="bookkeeping")
    """Wrap the update steps in ``torch.compile`` on CUDA (eager fallback with a message where it cannot compile); on
    CPU the updates run eagerly, where compiling measured no faster (``opt_fast.runtime.compile_choice``)."""
    device: str = setting("cpu", phase="offline", role="execution")
    """Torch device of the networks and updates: ``cpu``, ``cuda`` or ``cuda:<index>``."""
    critic_backend: str = setting("auto", phase="collect", role="execution")
    """How critics are evaluated: ``torch``, ``triton`` (fused kernels) or ``auto`` (triton on CUDA)."""
    env_backend: str = setting("gymnasium", phase="offline")
    """Simulator of online collection and evaluation: ``gymnasium`` (MuJoCo's C engine, the reference) or ``mjx``
    (mujoco-mjx on JAX's default device; hopper, walker2d, halfcheetah, ant; ``pip install 'opt-fast[mjx]'``)."""
    torch_threads: int = setting(0, phase=None, bounds=NON_NEGATIVE, role="bookkeeping")
    """``torch.set_num_threads``; 0 leaves PyTorch's default."""

    # --- phase lengths (§2) ------------------------------------------------------------------------------
    offline_steps: int = setting(1_000_000, phase="offline", bounds=POSITIVE)
    """Phase 1: offline gradient steps."""
    n_tau: int = setting(25_000, phase="pretrain", bounds=NON_NEGATIVE)
    """Phase 2a: env steps collected with the frozen offline policy, no updates."""
    n_pretrain: int = setting(50_000, phase="finetune", bounds=NON_NEGATIVE)
    """Phase 2b: meta-adaptation updates of Q_on."""
    online_steps: int = setting(300_000, phase="collect", bounds=POSITIVE)
    """Total online env steps, the N_tau collection included."""
    utd: int = setting(5, phase="finetune", bounds=POSITIVE)
    """Updates per env step during fine-tuning (5 on MuJoCo)."""
    eval_every: int = setting(5_000, phase="offline", bounds=POSITIVE)
    """Evaluate every this many env steps online (and every this many gradient steps offline)."""
    eval_episodes: int = setting(10, phase="offline", bounds=POSITIVE)
    """Episodes of the deterministic policy per evaluation (each with its own reset seed)."""
    checkpoint_every: int = setting(50_000, phase="finetune", bounds=POSITIVE)
    """Checkpoint every this many offline gradient steps / online env steps (plus every phase boundary)."""
    log_every: int = setting(1_000, phase=None, bounds=POSITIVE, role="bookkeeping")
    """Write a training record to metrics.jsonl (the updates' losses and priority statistics averaged since the last
    one, kappa, SPOT's lambda, env steps/s, updates/s, wall-clock seconds) every this many steps of the phase
    (gradient steps offline and in pre-training, env steps online) and at every phase end. Bookkeeping: outside the
    run's hash and the cache keys."""

    # --- TD3 / TD3+BC (§3, §4) --------------------------------------------------------------------------
    hidden: tuple[int, ...] = setting((256, 256), phase="offline", bounds=POSITIVE)
    """Hidden layer sizes of the actor, the critics and the density-ratio net."""
    actor_lr: float = setting(3e-4, phase="offline", bounds=POSITIVE)
    """Adam learning rate of the actor."""
    critic_lr: float = setting(3e-4, phase="offline", bounds=POSITIVE)
    """Adam learning rate of Q_off and Q_on."""
    batch_size: int = setting(256, phase="offline", bounds=POSITIVE)
    """Transitions per batch of every update (offline, online and balanced)."""
    gamma: float = setting(0.99, phase="offline", bounds=UNIT_INTERVAL)
    """Discount factor."""
    tau: float = setting(0.005, phase="offline", bounds=UNIT_INTERVAL)
    """Polyak rate of the target networks, applied every ``policy_delay`` updates (see ``tau_scaling``)."""
    tau_scaling: Literal["none", "budget"] = setting("none", phase="offline", hashed_at_default=False)
    """``none``: every phase uses ``tau`` (the paper; default). ``budget``, a reduced-budget deviation: the offline
    phase and Q_on's pre-training use tau x (the paper's length of the phase / the budget's), at most 1, so that
    updates x tau, which sets how far a critic's value level gets to its scale, is the paper's; fine-tuning keeps
    ``tau``. From the budget's lengths, not the overrides', so every cell of an N_pretrain grid shares one rate."""
    policy_noise: float = setting(0.2, phase="offline", bounds=NON_NEGATIVE)
    """Std of the target-policy smoothing noise (TD3)."""
    noise_clip: float = setting(0.5, phase="offline", bounds=NON_NEGATIVE)
    """Clip of the target-policy smoothing noise (TD3)."""
    policy_delay: int = setting(2, phase="offline", bounds=POSITIVE)
    """Critic updates per actor update and target update (TD3's delay; also Q_on's targets in pre-training)."""
    exploration_noise: float = setting(0.1, phase="collect", bounds=NON_NEGATIVE)
    """Std of the Gaussian noise on the policy's actions online (collection and fine-tuning)."""
    bc_alpha: float = setting(2.5, phase="offline", bounds=NON_NEGATIVE)
    """TD3+BC's alpha: lambda = alpha / mean|Q| weighs the Q term against behaviour cloning offline."""

    # --- SPOT (§3.1, §3.3, §4) ---------------------------------------------------------------------------
    spot_lambda: float = setting(1.0, phase="offline", bounds=NON_NEGATIVE)
    """lam_spot, weight of the behaviour-VAE density penalty in SPOT's actor loss."""
    spot_lambda_end: float = setting(0.5, phase="finetune", bounds=UNIT_INTERVAL)
    """Online cooling floor: lam_t = lam_spot * max(lam_end, 1 - t_online / T_online)."""
    vae_steps: int = setting(100_000, phase="offline", bounds=NON_NEGATIVE)
    """Behaviour-VAE gradient steps at the start of the offline phase, before the actor and critic (SPOT)."""
    vae_hidden: tuple[int, ...] = setting((750, 750), phase="offline", bounds=POSITIVE)
    """Hidden layer sizes of SPOT's behaviour VAE (encoder and decoder)."""
    vae_lr: float = setting(1e-3, phase="offline", bounds=POSITIVE)
    """Adam learning rate of SPOT's behaviour VAE."""
    vae_beta: float = setting(0.5, phase="offline", bounds=NON_NEGATIVE)
    """Weight of the KL term in the VAE's negative ELBO."""
    layer_norm: bool = setting(False, phase="offline")
    """LayerNorm after every hidden layer of the actor and the critics (SPOT on Adroit)."""
    actor_init: float = setting(0.0, phase="offline", bounds=NON_NEGATIVE)
    """Actor last layer drawn from U(-v, v) (SPOT: 1e-3); 0 keeps PyTorch's default initialisation."""
    critic_init: float = setting(0.0, phase="offline", bounds=NON_NEGATIVE)
    """Critics' last layer drawn from U(-v, v) (SPOT: 3e-3); 0 keeps PyTorch's default initialisation."""
    online_gamma: float = setting(0.0, phase="collect", bounds=Range(0, 1, high_open=True))
    """Discount after the offline phase, for Q_on's pre-training and fine-tuning (AntMaze 0.995); 0 keeps gamma."""
    antmaze_reward: str = setting("minus_one", phase="offline")
    """AntMaze training reward from the 0/1 success reward: ``minus_one`` r - 1 (IQL/SPOT/OPT), ``cql``
    4 (r - 0.5), ``calql`` 10 r - 5, ``none``; evaluation always counts the raw success."""

    # --- OPT online pre-training (§3.2) -----------------------------------------------------------------
    meta_adaptation: bool = setting(True, phase="pretrain")
    """Second-order meta-adaptation objective; off = plain L_off + L_on (an ablation of the paper)."""
    meta_inner_lr: float = setting(3e-4, phase="pretrain", bounds=POSITIVE)
    """alpha_in: step size of the inner SGD step of meta-adaptation (docs/method.md §3.2)."""
    meta_loss_weight: Literal["ratio", "one"] = setting("ratio", phase="pretrain")
    """``ratio``: w = sg(min(L_off, L_on) / L_on) as the released code; ``one``: the paper's equation, w = 1."""
    pretrain_data: Literal["both", "offline", "online"] = setting("both", phase="pretrain")
    """Data Q_on is pre-trained on (ablation: offline only / online only use plain TD on that buffer)."""

    # --- balanced replay (§3.3) --------------------------------------------------------------------------
    density_lr: float = setting(3e-4, phase="finetune", bounds=POSITIVE)
    """Adam learning rate of the density-ratio net of balanced replay."""
    replay_temperature: float = setting(5.0, phase="finetune", bounds=POSITIVE)
    """T of balanced replay's priorities w^(1/T) / mean_offline(w^(1/T)) (docs/method.md §3.3)."""
    replay_ring: bool = setting(False, phase="collect")
    """Cap the fine-tuning replay at ``replay_ring_capacity`` as a ring (released code) instead of keeping
    every offline row (default)."""
    replay_ring_capacity: int = setting(1_000_000, phase="collect", bounds=POSITIVE)
    """Capacity of the fine-tuning replay with ``--replay-ring true`` (the released code's 1M)."""

    # --- kappa schedule (§3.4) ---------------------------------------------------------------------------
    kappa_start: float = setting(0.1, phase="finetune", bounds=UNIT_INTERVAL)
    """Weight on Q_on in the actor's objective at the start of the ramp."""
    kappa_end: float = setting(0.9, phase="finetune", bounds=UNIT_INTERVAL)
    """Weight on Q_on at the end of the ramp and after it."""
    kappa_ramp_share: float = setting(150_000 / 275_000, phase="finetune", bounds=UNIT_INTERVAL)
    """Length of the linear kappa ramp as a share of fine-tuning (from the first fine-tuning update to the end of
    the online budget): the paper's 150k of 275k steps, so every budget and every N_tau keeps the schedule's shape;
    0 = kappa_end from the first update."""
    kappa_ramp_from: Literal["n_tau", "zero"] = setting("n_tau", phase="finetune")
    """``n_tau``: the ramp starts at the first fine-tuning update (N_tau, or later while B_on holds less than one
    batch), as the paper's N_tau = 25k >> 256 has it (default); ``zero``: it starts at env step 0."""

    extra: dict[str, Any] = setting(phase=None, role="bookkeeping", default_factory=dict)
    """Free-form annotations recorded with the run (never read by the trainer)."""

    @functools.cached_property
    def task(self) -> Task:
        """``env`` parsed once (:class:`opt_fast.tasks.Task`): family, kind, data source and env factory."""
        from opt_fast.tasks import resolve_task  # on use: a task knows the envs, which loading a config needs not

        return resolve_task(self.env)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists), so a config equals itself read back from config.json."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(names)}")
        data = dict(data)
        for key in ("hidden", "vae_hidden", "seed_batch"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def digest(self, fields: tuple[str, ...] | None = None) -> str:
        """A short stable hash of the given fields (all but bookkeeping ones by default)."""
        values = self.to_json()
        keys = fields if fields is not None else sorted(set(values) - set(BOOKKEEPING_FIELDS))
        keys = [k for k in keys if k not in _DEFAULTS_UNHASHED or values[k] != _DEFAULTS_UNHASHED[k]]
        blob = json.dumps({k: values[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def config_differences(stored: dict[str, Any], wanted: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The options but ``ignore`` in which two configs (``to_json()`` values) differ, each as ``--name (stored vs
    wanted)``; a config.json written before a field existed had its default."""
    stored = {**Config().to_json(), **stored}
    return [f"--{key.replace('_', '-')} ({stored.get(key)!r} there, {wanted.get(key)!r} here)"
            for key in sorted((set(stored) | set(wanted)) - set(ignore)) if stored.get(key) != wanted.get(key)]


PHASES = ("offline", "collect", "pretrain", "finetune", "done")
"""A run's phases in order (docs/method.md §2); ``done`` once fine-tuning has ended."""

ENV_BACKENDS = ("gymnasium", "mjx")
MJX_FAMILIES = ("hopper", "walker2d", "halfcheetah", "ant")
"""The families ``opt_fast.envs.mjx`` simulates."""

def fields_of(phase: str) -> tuple[str, ...]:
    """The fields (sorted) that determine a run's state up to the end of ``phase`` (a field's ``phase`` metadata at
    or before it), bookkeeping left out."""
    last = PHASE_FIELDS_ORDER.index(phase)
    return tuple(sorted(f.name for f in dataclasses.fields(Config)
                        if f.metadata["phase"] is not None and PHASE_FIELDS_ORDER.index(f.metadata["phase"]) <= last))


def fields_with_role(*roles: str) -> tuple[str, ...]:
    return tuple(sorted(f.name for f in dataclasses.fields(Config) if f.metadata["role"] in roles))


# Fields that determine the offline phase's result: runs sharing them share its checkpoint.
OFFLINE_FIELDS = fields_of("offline")

# Fields that determine the collection phase's state at a given env step, whatever N_tau itself is: runs sharing
# them branch from the stored prefix of a longer collection of the same seed (``Trainer.collect_snapshots``).
COLLECT_FIELDS = fields_of("collect")

# Fields that determine the run's state at a given step of Q_on's pre-training, whatever N_pretrain itself is: runs
# sharing them start from the stored state of a longer pre-training of the same seed (``Trainer.pretrain_snapshots``).
PRETRAIN_FIELDS = fields_of("pretrain")

# Fields left out of the hashes while at their default (``hashed_at_default``), with their default as JSON.
_DEFAULTS_UNHASHED: dict[str, Any] = {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(Config)
                                      if not f.metadata["hashed_at_default"]}

BOOKKEEPING_FIELDS = fields_with_role("bookkeeping")
"""Outside the run's hash (:meth:`Config.digest`) and every cache key: where the numbers are reported, not what."""

# Phase lengths per budget. `paper` is docs/method.md §2; the reduced ones keep its proportions where they can: N_tau is
# 8.3% of the online budget (the share of it that TD3 fine-tunes and OPT collects), and the critics get enough
# updates to approach their value scale. With Polyak tau = 0.005 every 2 updates and gamma = 0.99 a critic's value
# level closes on its fixed point at about (tau / 2)(1 - gamma) = 2.5e-5 per update: 1 - exp(-2.5e-5 N) of scale
# after N updates (39% after 20k, 71% after the paper's 50k, 99% after 200k).
BUDGETS: dict[str, dict[str, int]] = {
    "paper": dict(offline_steps=1_000_000, n_tau=25_000, n_pretrain=50_000, online_steps=300_000,
                  eval_every=5_000, eval_episodes=10, checkpoint_every=50_000, vae_steps=100_000),
    # The study of results/study on a 2-core CPU: Q_off at 99% of its value scale (200k updates), Q_on pre-trained
    # for the paper's 50k updates (71%, as in the paper), N_tau and the online budget at the paper's ratio.
    "study": dict(offline_steps=200_000, n_tau=5_000, n_pretrain=50_000, online_steps=60_000,
                  eval_every=2_500, eval_episodes=10, checkpoint_every=10_000, vae_steps=100_000),
    # The README's default job (data generation included) in ~30 minutes on 2 cores: Q_off and Q_on both get 20k
    # updates (39% of scale each: neither critic is further from its scale than the other), N_tau 8.3% of online.
    "quick": dict(offline_steps=20_000, n_tau=1_000, n_pretrain=20_000, online_steps=12_000,
                  eval_every=2_000, eval_episodes=5, checkpoint_every=5_000, vae_steps=5_000),
    # The budget of results/cpu-budget: 9 datasets x 5 seeds x {TD3, TD3+OPT} in about an hour; a usable offline
    # policy, then the start of fine-tuning. N_tau < one batch, so fine-tuning updates (and the kappa ramp) start
    # at env step 256 for both variants.
    "cpu": dict(offline_steps=10_000, n_tau=100, n_pretrain=500, online_steps=500,
                eval_every=250, eval_episodes=5, checkpoint_every=2_500, vae_steps=1_000),
    "smoke": dict(offline_steps=200, n_tau=100, n_pretrain=50, online_steps=300,
                  eval_every=100, eval_episodes=1, checkpoint_every=100, vae_steps=50),
}

# The generation budget (opt_fast.datagen.mujoco.GENERATION_BUDGETS and Adroit's, AntMaze's) of the data a training
# budget makes when no dataset file is found.
DATA_BUDGET: dict[str, str] = {"paper": "paper", "study": "study", "quick": "quick", "cpu": "quick", "smoke": "smoke"}

# A SPOT step costs several MuJoCo TD3+BC steps on a CPU (the 750-750 VAE runs inside every actor loss, LayerNorm,
# UTD 1 but 200-1000-step evaluation episodes), so the SPOT families' reduced budgets are smaller; the VAE keeps its
# size.
SPOT_BUDGETS: dict[str, dict[str, int]] = {
    # UTD 1 makes the paper's own protocol affordable on a CPU for the SPOT families (the door-cloned study).
    "study": BUDGETS["paper"],
    "quick": dict(offline_steps=5_000, vae_steps=1_000, n_tau=1_000, n_pretrain=1_000, online_steps=5_000,
                  eval_every=1_000, eval_episodes=5, checkpoint_every=1_000),
    "cpu": dict(offline_steps=3_000, vae_steps=1_000, n_tau=100, n_pretrain=250, online_steps=500,
                eval_every=250, eval_episodes=5, checkpoint_every=1_000),
}

# kappa schedules (docs/method.md §3.4), keyed by dataset kind: (start, end, ramp in env steps at the paper budget).
# medium-expert and expert are not in the paper; they take medium's schedule (narrow, good-quality data, as
# medium), stated in the README.
KAPPA_PRESETS: dict[str, tuple[float, float, int]] = {
    "random": (1.0, 1.0, 0),
    "medium": (0.3, 0.9, 150_000),
    "medium-replay": (0.1, 0.9, 150_000),
    "medium-expert": (0.3, 0.9, 150_000),
    "expert": (0.3, 0.9, 150_000),
    # AntMaze: 100k ramp for all but large-diverse (200k).
    "umaze": (0.1, 0.9, 100_000),
    "umaze-diverse": (0.1, 0.9, 100_000),
    "medium-play": (0.1, 0.9, 100_000),
    "medium-diverse": (0.1, 0.9, 100_000),
    "large-play": (0.1, 0.9, 100_000),
    "large-diverse": (0.1, 0.9, 200_000),
}
# Adroit: the paper lists cloned; human and expert take its schedule (same narrow, demo-like data), by analogy.
ADROIT_KAPPA = (0.1, 0.9, 250_000)

# SPOT families (§4): SPOT backbone, actor lr 1e-4, UTD 1, last-layer init U(+-1e-3) actor / U(+-3e-3) critic.
_SPOT = dict(backbone="spot", actor_lr=1e-4, utd=1, actor_init=1e-3, critic_init=3e-3)
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    ANTMAZE_FAMILY: dict(_SPOT, spot_lambda_end=0.2, online_gamma=0.995),
    **{family: dict(_SPOT, spot_lambda=1.0, spot_lambda_end=0.5, layer_norm=True) for family in ADROIT_FAMILIES},
}
# AntMaze lam_spot per dataset (§4; medium-diverse is uncertain between 0.025 and 0.05: 0.025 as the table).
ANTMAZE_LAMBDA: dict[str, float] = {
    "umaze": 0.25, "umaze-diverse": 0.25, "medium-play": 0.05, "medium-diverse": 0.025, "large-play": 0.025,
    "large-diverse": 0.025,
}


def resolve(base: Config, overrides: dict[str, Any], dataset_kind: str, family: str | None = None) -> Config:
    """The fully resolved config: budget, then the dataset family's preset, then explicit overrides.

    ``family`` (hopper, antmaze, door...) selects the SPOT presets of AntMaze and Adroit. The kappa ramp is a share
    of the fine-tuning phase (:func:`kappa_ramp_steps`), so it follows the final phase lengths, overrides included.
    """
    budget = overrides.get("budget", base.budget)
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {sorted(BUDGETS)}")
    values = base.to_json()
    values.update(BUDGETS[budget])
    values.update(FAMILY_PRESETS.get(family or "", {}))
    if values["backbone"] == "spot":
        values.update(SPOT_BUDGETS.get(budget, {}))
    if family == ANTMAZE_FAMILY and dataset_kind in ANTMAZE_LAMBDA:
        values["spot_lambda"] = ANTMAZE_LAMBDA[dataset_kind]
    schedule = ADROIT_KAPPA if family in ADROIT_FAMILIES else KAPPA_PRESETS.get(dataset_kind)
    if schedule is not None:
        start, end, ramp = schedule
        paper_finetune = BUDGETS["paper"]["online_steps"] - BUDGETS["paper"]["n_tau"]
        values.update(kappa_start=start, kappa_end=end, kappa_ramp_share=ramp / paper_finetune)
    values.update(overrides)
    values["budget"] = budget
    config = Config.from_json(values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject configs that cannot run, naming the option."""
    for f in dataclasses.fields(Config):
        if "range" in f.metadata:
            _check_range(f, getattr(config, f.name))
    if config.opt and config.n_tau >= config.online_steps:
        raise ValueError(f"--n-tau ({config.n_tau}) must be smaller than --online-steps ({config.online_steps})")
    if config.opt and config.n_tau < 1 and config.n_pretrain > 0 and config.pretrain_data != "offline":
        raise ValueError("online pre-training on online data needs --n-tau >= 1")
    if config.meta_loss_weight not in ("ratio", "one"):
        raise ValueError(f"--meta-loss-weight must be 'ratio' or 'one', got {config.meta_loss_weight!r}")
    if config.pretrain_data not in ("both", "offline", "online"):
        raise ValueError(f"--pretrain-data must be both|offline|online, got {config.pretrain_data!r}")
    if config.tau_scaling not in ("none", "budget"):
        raise ValueError(f"--tau-scaling must be 'none' or 'budget', got {config.tau_scaling!r}")
    if config.kappa_ramp_from not in ("n_tau", "zero"):
        raise ValueError(f"--kappa-ramp-from must be 'n_tau' or 'zero', got {config.kappa_ramp_from!r}")
    if config.env_backend not in ENV_BACKENDS:
        raise ValueError(f"--env-backend must be one of {', '.join(ENV_BACKENDS)}, got {config.env_backend!r}")
    if config.env_backend == "mjx" and config.task.family not in MJX_FAMILIES:
        raise ValueError(f"--env-backend mjx simulates {', '.join(MJX_FAMILIES)}; {config.env} runs on "
                         "--env-backend gymnasium")
    if config.backbone not in ("td3", "spot"):
        raise ValueError(f"--backbone must be 'td3' or 'spot', got {config.backbone!r}")
    if config.backbone == "td3" and (config.layer_norm or config.actor_init or config.critic_init):
        raise ValueError("--layer-norm, --actor-init and --critic-init apply to the SPOT backbone (--backbone spot)")
    if config.antmaze_reward not in ANTMAZE_REWARDS:
        raise ValueError(f"--antmaze-reward must be one of {', '.join(ANTMAZE_REWARDS)}, got {config.antmaze_reward!r}")


def _check_range(f: dataclasses.Field, value: Any) -> None:
    """``value`` (each entry of a tuple field) is a number of the field's type within its ``metadata["range"]``."""
    option, bounds = f"--{f.name.replace('_', '-')}", f.metadata["range"]
    entries = value if isinstance(value, tuple) else (value,)
    whole = int if isinstance(f.default, int) or isinstance(value, tuple) else (int, float)
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, whole):
            kind = "an integer" if whole is int else "a number"
            raise ValueError(f"{option} must be {kind}, got {value!r}")
        if entry not in bounds:
            each = "every entry of " if isinstance(value, tuple) else ""
            raise ValueError(f"{each}{option} must be {bounds}, got {value!r}")


def offline_phase_steps(config: Config) -> int:
    """Gradient steps of the offline phase: SPOT's behaviour-VAE steps come first, then the actor/critic steps."""
    return config.offline_steps + (config.vae_steps if config.backbone == "spot" else 0)


def phase_tau(config: Config, phase: Literal["offline", "pretrain", "finetune"]) -> float:
    """The Polyak rate of a phase's target updates: ``tau``, or with ``--tau-scaling budget`` scaled in the offline
    phase and Q_on's pre-training by the paper's length of the phase over the budget's (``tau_scaling``)."""
    if config.tau_scaling == "none" or phase == "finetune":
        return config.tau
    length = "offline_steps" if phase == "offline" else "n_pretrain"
    budgets = SPOT_BUDGETS if config.backbone == "spot" and config.budget in SPOT_BUDGETS else BUDGETS
    return min(1.0, config.tau * BUDGETS["paper"][length] / budgets[config.budget][length])


def online_discount(config: Config) -> float:
    """The discount of every update after the offline phase (SPOT on AntMaze switches to 0.995 there)."""
    return config.online_gamma or config.gamma


def first_update_step(config: Config) -> int:
    """The online env step at which fine-tuning updates start: the density-ratio net needs one batch in B_on, which
    OPT's collection fills when N_tau >= the batch size and the baseline after ``batch_size`` env steps."""
    return max(config.n_tau if config.opt else 0, config.batch_size)


def kappa_ramp_steps(config: Config) -> int:
    """The kappa ramp's length in env steps: its share of the fine-tuning phase (150k of 275k in the paper)."""
    return round(config.kappa_ramp_share * max(config.online_steps - first_update_step(config), 0))


def kappa(config: Config, online_step: int) -> float:
    """Weight on Q_on in the actor's objective at a given online env step (§3.4)."""
    origin = first_update_step(config) if config.kappa_ramp_from == "n_tau" else 0
    ramp = kappa_ramp_steps(config)
    if ramp == 0:
        return config.kappa_end if online_step >= origin else config.kappa_start
    progress = min(max((online_step - origin) / ramp, 0.0), 1.0)
    return config.kappa_start + (config.kappa_end - config.kappa_start) * progress
