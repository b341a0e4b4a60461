"""The run configuration: one typed dataclass, the paper's values as defaults (OPT.md §4), presets per dataset
family (§3.4) and budgets that scale the protocol down for small machines."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Config:
    # --- what to run -------------------------------------------------------------------------------------
    env: str = "hopper-medium-replay"
    """Dataset name as D4RL spells it (``walker2d-medium-replay``, ``-v2`` suffix optional)."""
    dataset: str | None = None
    """Explicit path to a D4RL-layout hdf5 file; otherwise ``$D4RL_DATASET_DIR`` then locally generated data."""
    env_version: str = "v5"
    """Gymnasium MuJoCo version of the online/evaluation env (v5 default; v4 selectable)."""
    seed: int = 0
    budget: str = "quick"
    """Protocol size: ``paper`` (1M offline + 300k online), ``quick`` (2-core machine), ``smoke`` (tests)."""
    opt: bool = True
    """OPT on; off gives the paper's "TD3" baseline (TD3+BC offline -> TD3 online, same replay)."""
    compile: bool = False
    """Wrap the update steps in ``torch.compile`` (eager fallback with a message where it cannot compile)."""
    device: str = "cpu"
    torch_threads: int = 0
    """``torch.set_num_threads``; 0 leaves PyTorch's default."""

    # --- phase lengths (§2) ------------------------------------------------------------------------------
    offline_steps: int = 1_000_000
    """Phase 1: offline gradient steps."""
    n_tau: int = 25_000
    """Phase 2a: env steps collected with the frozen offline policy, no updates."""
    n_pretrain: int = 50_000
    """Phase 2b: meta-adaptation updates of Q_on."""
    online_steps: int = 300_000
    """Total online env steps, the N_tau collection included."""
    utd: int = 5
    """Updates per env step during fine-tuning (5 on MuJoCo)."""
    eval_every: int = 5_000
    """Evaluate every this many env steps online (and every this many gradient steps offline)."""
    eval_episodes: int = 10
    checkpoint_every: int = 50_000
    """Checkpoint every this many offline gradient steps / online env steps (plus every phase boundary)."""

    # --- TD3 / TD3+BC (§3, §4) --------------------------------------------------------------------------
    hidden: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2
    exploration_noise: float = 0.1
    bc_alpha: float = 2.5

    # --- OPT online pre-training (§3.2) -----------------------------------------------------------------
    meta_adaptation: bool = True
    """Second-order meta-adaptation objective; off = plain L_off + L_on (an ablation of the paper)."""
    meta_inner_lr: float = 3e-4
    meta_loss_weight: Literal["ratio", "one"] = "ratio"
    """``ratio``: w = sg(min(L_off, L_on) / L_on) as the released code; ``one``: the paper's equation, w = 1."""
    pretrain_data: Literal["both", "offline", "online"] = "both"
    """Data Q_on is pre-trained on (ablation: offline only / online only use plain TD on that buffer)."""

    # --- balanced replay (§3.3) --------------------------------------------------------------------------
    density_lr: float = 3e-4
    replay_temperature: float = 5.0
    replay_ring: bool = False
    """Cap the fine-tuning replay at ``replay_ring_capacity`` as a ring (released code) instead of keeping
    every offline row (default)."""
    replay_ring_capacity: int = 1_000_000

    # --- kappa schedule (§3.4) ---------------------------------------------------------------------------
    kappa_start: float = 0.1
    kappa_end: float = 0.9
    kappa_ramp: int = 150_000
    kappa_ramp_from: Literal["n_tau", "zero"] = "n_tau"
    """``n_tau``: the ramp is a duration starting when fine-tuning starts (default); ``zero``: absolute env step."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form annotations recorded with the run (never read by the trainer)."""

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
        if "hidden" in data:
            data["hidden"] = tuple(data["hidden"])
        return cls(**data)

    def digest(self, fields: tuple[str, ...] | None = None) -> str:
        """A short stable hash of the given fields (all but bookkeeping ones by default)."""
        values = self.to_json()
        keys = fields if fields is not None else sorted(set(values) - {"extra", "compile", "torch_threads"})
        blob = json.dumps({k: values[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Fields that determine the offline phase's result: runs sharing them share its checkpoint.
OFFLINE_FIELDS = (
    "env", "dataset", "seed", "offline_steps", "hidden", "actor_lr", "critic_lr", "batch_size", "gamma", "tau",
    "policy_noise", "noise_clip", "policy_delay", "bc_alpha", "device",
)

# Phase lengths per budget. `paper` is OPT.md §2; the others keep its proportions where they can.
BUDGETS: dict[str, dict[str, int]] = {
    "paper": dict(offline_steps=1_000_000, n_tau=25_000, n_pretrain=50_000, online_steps=300_000,
                  eval_every=5_000, eval_episodes=10, checkpoint_every=50_000),
    "quick": dict(offline_steps=30_000, n_tau=2_500, n_pretrain=5_000, online_steps=15_000,
                  eval_every=2_500, eval_episodes=5, checkpoint_every=5_000),
    "smoke": dict(offline_steps=200, n_tau=100, n_pretrain=50, online_steps=300,
                  eval_every=100, eval_episodes=1, checkpoint_every=100),
}

# kappa schedules (OPT.md §3.4), keyed by dataset kind: (start, end, ramp in env steps at the paper budget).
# medium-expert and expert are not in the paper; they take medium's schedule (narrow, good-quality data, as
# medium), stated in the README.
KAPPA_PRESETS: dict[str, tuple[float, float, int]] = {
    "random": (1.0, 1.0, 0),
    "medium": (0.3, 0.9, 150_000),
    "medium-replay": (0.1, 0.9, 150_000),
    "medium-expert": (0.3, 0.9, 150_000),
    "expert": (0.3, 0.9, 150_000),
}


def resolve(base: Config, overrides: dict[str, Any], dataset_kind: str) -> Config:
    """The fully resolved config: budget, then the dataset family's preset, then explicit overrides.

    The kappa ramp is scaled with the budget's fine-tuning length so that the schedule keeps its shape.
    """
    budget = overrides.get("budget", base.budget)
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {sorted(BUDGETS)}")
    values = base.to_json()
    values.update(BUDGETS[budget])
    if dataset_kind in KAPPA_PRESETS:
        start, end, ramp = KAPPA_PRESETS[dataset_kind]
        paper_finetune = BUDGETS["paper"]["online_steps"] - BUDGETS["paper"]["n_tau"]
        finetune = values["online_steps"] - values["n_tau"]
        values.update(kappa_start=start, kappa_end=end, kappa_ramp=round(ramp * finetune / paper_finetune))
    values.update(overrides)
    values["budget"] = budget
    config = Config.from_json(values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject configs that cannot run, naming the option."""
    positive = ("offline_steps", "online_steps", "utd", "eval_every", "eval_episodes", "checkpoint_every",
                "batch_size", "policy_delay")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    for name in ("n_tau", "n_pretrain", "kappa_ramp"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if config.opt and config.n_tau >= config.online_steps:
        raise ValueError(f"--n-tau ({config.n_tau}) must be smaller than --online-steps ({config.online_steps})")
    if config.opt and config.n_tau < 1 and config.n_pretrain > 0 and config.pretrain_data != "offline":
        raise ValueError("online pre-training on online data needs --n-tau >= 1")
    if not 0.0 <= config.kappa_start <= 1.0 or not 0.0 <= config.kappa_end <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got start {config.kappa_start}, end {config.kappa_end}")
    if config.meta_loss_weight not in ("ratio", "one"):
        raise ValueError(f"--meta-loss-weight must be 'ratio' or 'one', got {config.meta_loss_weight!r}")
    if config.pretrain_data not in ("both", "offline", "online"):
        raise ValueError(f"--pretrain-data must be both|offline|online, got {config.pretrain_data!r}")
    if config.kappa_ramp_from not in ("n_tau", "zero"):
        raise ValueError(f"--kappa-ramp-from must be 'n_tau' or 'zero', got {config.kappa_ramp_from!r}")


def kappa(config: Config, online_step: int) -> float:
    """Weight on Q_on in the actor's objective at a given online env step (§3.4)."""
    origin = config.n_tau if config.kappa_ramp_from == "n_tau" else 0
    if config.kappa_ramp == 0:
        return config.kappa_end if online_step >= origin else config.kappa_start
    progress = min(max((online_step - origin) / config.kappa_ramp, 0.0), 1.0)
    return config.kappa_start + (config.kappa_end - config.kappa_start) * progress
