"""Ablations of OPT (docs/method.md §6) as sets of run configurations, and the label that names a run by what it changes.

An :class:`AblationSpec` is datasets x seeds x variants, optionally crossed with a grid of N_tau (env steps collected
before fine-tuning) and N_pretrain (updates of Q_on before fine-tuning). :func:`expand` turns it into resolved configs;
:mod:`opt_fast.sweep` runs them, sharing the offline phase and the collection between them.

Two cells of the grid need a rule:

* N_tau = 0 with N_pretrain > 0: there is no online data to pre-train on, so Q_on is pre-trained on offline data
  only (``pretrain_data="offline"``, plain TD on D_off) -- the cell measures "pre-training without online data".
  Variants that pre-train on online data only (``pretrain-online``) cannot run there and are skipped, with a reason.
* N_tau = 0 and N_pretrain = 0: Q_on starts from its random initialisation when fine-tuning starts.

The baseline (OPT off) has neither phase, so it is run once per dataset and seed, outside the grid.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from opt_fast.runs import resolve_for
from opt_fast.config import BUDGETS, Config, fields_with_role

VARIANTS: dict[str, dict[str, Any]] = {
    "opt": {},
    "baseline": {"opt": False},  # the backbone alone (TD3 or SPOT), same replay (§6)
    # The paper's ablations of online pre-training (§6):
    "new-critic": {"n_pretrain": 0},  # a new randomly initialised Q_on, no online pre-training
    "pretrain-offline": {"pretrain_data": "offline"},
    "pretrain-online": {"pretrain_data": "online"},
    "no-meta": {"meta_adaptation": False},  # offline + online data, plain L_off + L_on
    "weight-one": {"meta_loss_weight": "one"},  # the paper's equation instead of the released loss ratio
    # kappa schedules (§3.4):
    "kappa-no-ramp": {"kappa_ramp_share": 0.0},  # kappa_end from the start of fine-tuning
    "kappa-from-zero": {"kappa_ramp_from": "zero"},  # the ramp counted from env step 0, not from N_tau
    "kappa-q-on": {"kappa_start": 1.0, "kappa_end": 1.0},  # the actor follows Q_on alone
    "kappa-q-off": {"kappa_start": 0.0, "kappa_end": 0.0},  # Q_on trained but never used by the actor
}

# Set per run by the spec itself, so never by a variant or the base overrides.
_SPEC_KEYS = ("env", "seed", "budget")


@dataclass
class AblationSpec:
    datasets: list[str]
    """Dataset names as ``--env`` takes them (``hopper-medium-replay``)."""
    seeds: list[int]
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"opt": {}})
    """Variant name -> Config overrides (the names of :data:`VARIANTS` map to theirs)."""
    budget: str = "quick"
    n_tau: list[int] | None = None
    """N_tau values of the grid; None keeps the one of ``base``, else the budget's."""
    n_pretrain: list[int] | None = None
    """N_pretrain values of the grid; None keeps the one of ``base``, else the budget's."""
    base: dict[str, Any] = field(default_factory=dict)
    """Config overrides applied to every run (before the grid and the variant)."""


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,2,5`` -> [0, 2, 5]; both may mix (``0-2,7``). Errors name ``what`` (the
    option or the file key the text came from)."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"{what}: expected non-negative integers or ranges such as 0-4 or 0,2,5, got "
                             f"{text!r}") from None
        if high < low:
            raise ValueError(f"{what}: the range {part.strip()!r} is empty; write FIRST-LAST with FIRST <= LAST")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{what}: every seed once, got {text!r}")
    return seeds


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers such as 0,5000,25000, got {text!r}") from None


def variant_overrides(names: list[str]) -> dict[str, dict[str, Any]]:
    """The overrides of named variants."""
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return {name: dict(VARIANTS[name]) for name in names}


def check_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Config overrides with each value of its field's type (lists for tuples, ints for floats); raises
    ``ValueError`` naming ``where`` and the key otherwise."""
    defaults = Config()
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _SPEC_KEYS:
            raise ValueError(f"{where}: {key!r} is set by the sweep itself (datasets, seeds, budget), not per run")
        if not hasattr(defaults, key):
            raise ValueError(f"{where}: unknown config key {key!r}")
        default = getattr(defaults, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            value = tuple(value) if ok else value
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif default is None or isinstance(default, str):
            ok = value is None or isinstance(value, str)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            expected = ("a list of integers" if isinstance(default, tuple) else
                        "a string" if default is None else f"of type {type(default).__name__}")
            raise ValueError(f"{where}: {key} must be {expected}, got {value!r}")
        checked[key] = value
    return checked


def configure(env: str, overrides: dict[str, Any]) -> Config:
    """The resolved config of one run, as ``opt-fast train --env ENV`` with these options resolves it."""
    return resolve_for(Config(), {**overrides, "env": env})


def expand(spec: AblationSpec) -> tuple[list[Config], list[str]]:
    """The distinct configs of a spec, and a reason for each combination that cannot run (see the module notes)."""
    if spec.budget not in BUDGETS:
        raise ValueError(f"budget: unknown budget {spec.budget!r}; choose one of {sorted(BUDGETS)}")
    base = check_overrides(spec.base, "settings of every run (--set, or base in a sweep file)")
    variants = {name: check_overrides(overrides, f"variant {name!r}") for name, overrides in spec.variants.items()}
    # Without a grid, each dataset keeps its own preset (the SPOT families' budgets differ from MuJoCo's).
    n_taus: list[int | None] = [*spec.n_tau] if spec.n_tau else [None]
    n_pretrains: list[int | None] = [*spec.n_pretrain] if spec.n_pretrain else [None]
    cells = [(n_tau, n_pretrain) for n_tau in n_taus for n_pretrain in n_pretrains]
    configs: dict[str, Config] = {}
    skipped: list[str] = []

    def add(env: str, values: dict[str, Any], what: str) -> None:
        try:
            config = canonical(configure(env, values))
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from err
        configs.setdefault(config.digest(), config)

    for env in spec.datasets:
        for seed in spec.seeds:
            common = {**base, "seed": seed, "budget": spec.budget}
            for name, overrides in variants.items():
                if not {**common, **overrides}.get("opt", True):
                    add(env, {**common, **overrides}, f"{env} seed {seed} {name}")
                    continue
                for n_tau, n_pretrain in cells:
                    chosen = [(key, label, value) for key, label, value in
                              (("n_tau", "N_tau", n_tau), ("n_pretrain", "N_pretrain", n_pretrain)) if value is not None]
                    what = f"{env} seed {seed} {name}" + "".join(f" {label}={value}" for _, label, value in chosen)
                    values = {**common, **{key: value for key, _, value in chosen}, **overrides}
                    # Every budget's own N_tau is positive, so only an explicit N_tau = 0 meets this rule.
                    if values.get("n_tau") == 0 and values.get("n_pretrain", 1) > 0:
                        if values.get("pretrain_data", "both") == "online":
                            skipped.append(f"{what}: N_tau=0 leaves no online data to pre-train Q_on on")
                            continue
                        values["pretrain_data"] = "offline"
                    add(env, values, what)
    return list(configs.values()), skipped


def canonical(config: Config) -> Config:
    """The same experiment with the settings it never reads at their defaults, so that variants that coincide
    (``new-critic`` and the N_pretrain = 0 cells, say) share one run."""
    meta = ("meta_adaptation", "meta_loss_weight", "meta_inner_lr")
    if not config.opt:
        unread: tuple[str, ...] = _ABLATION_FIELDS
    elif config.n_pretrain == 0:
        unread = ("pretrain_data",) + meta
    elif config.pretrain_data != "both":
        unread = meta
    elif not config.meta_adaptation:
        unread = meta[1:]
    else:
        unread = ()
    defaults = configure(config.env, {"budget": config.budget})
    return dataclasses.replace(config, **{name: getattr(defaults, name) for name in unread})


# ------------------------------------------------------------------------------------------ naming runs
_ABLATION_FIELDS = ("n_tau", "n_pretrain", "pretrain_data", "meta_adaptation", "meta_loss_weight", "meta_inner_lr",
                    "kappa_start", "kappa_end", "kappa_ramp_share", "kappa_ramp_from")


def method_name(config: Config) -> str:
    """``TD3``, ``TD3+OPT``, ``SPOT``, ``SPOT+OPT``: the paper's column names."""
    return config.backbone.upper() + ("+OPT" if config.opt else "")


def reference(config: Config) -> Config:
    """The same run with every ablation setting at its default for the dataset and budget."""
    defaults = configure(config.env, {"budget": config.budget})
    return dataclasses.replace(config, **{name: getattr(defaults, name) for name in _ABLATION_FIELDS})


def describe(config: Config) -> str:
    """A run's method and the ablation settings in which it differs from the paper's protocol at its budget, e.g.
    ``TD3+OPT`` or ``TD3+OPT N_tau=0, Q_on on offline data``. Runs with the same description may still differ in
    other settings (network sizes...); reports tell those apart by their config hash."""
    parts = ["tau scaled with the budget"] if config.tau_scaling == "budget" else []
    if config.opt:
        parts += _opt_differences(config)
    name = method_name(config)
    return f"{name} {', '.join(parts)}" if parts else name


def _opt_differences(config: Config) -> list[str]:
    """The OPT settings in which an OPT run differs from the paper's protocol at its budget, in words."""
    ref = reference(config)
    parts = []
    if config.n_tau != ref.n_tau:
        parts.append(f"N_tau={config.n_tau}")
    if config.n_pretrain != ref.n_pretrain:
        parts.append(f"N_pretrain={config.n_pretrain}")
    if config.n_pretrain > 0:
        if config.pretrain_data != ref.pretrain_data:
            parts.append(f"Q_on on {config.pretrain_data} data")
        if config.pretrain_data == "both" and config.meta_adaptation != ref.meta_adaptation:
            parts.append("meta-adaptation" if config.meta_adaptation else "no meta-adaptation")
        meta = config.pretrain_data == "both" and config.meta_adaptation
        if meta and config.meta_loss_weight != ref.meta_loss_weight:
            parts.append(f"meta loss weight {config.meta_loss_weight}")
        if meta and config.meta_inner_lr != ref.meta_inner_lr:
            parts.append(f"alpha_in={config.meta_inner_lr:g}")
    kappa = ("kappa_start", "kappa_end", "kappa_ramp_share", "kappa_ramp_from")
    if any(getattr(config, k) != getattr(ref, k) for k in kappa):
        origin = "the first update" if config.kappa_ramp_from == "n_tau" else "step 0"
        parts.append(f"kappa {config.kappa_start:g}->{config.kappa_end:g} over {config.kappa_ramp_share:.0%} of "
                     f"fine-tuning from {origin}")
    return parts


# Settings that do not change what an experiment measures (where and how fast it ran, free-form notes).
_BOOKKEEPING = frozenset(fields_with_role("bookkeeping", "execution"))


def setting_hash(config: Config) -> str:
    """The hash shared by the seeds of one experiment: every setting but the seed, its seed batch (which seeds
    trained beside it in one process) and the bookkeeping ones."""
    return dataclasses.replace(config, seed=0, seed_batch=()).digest(
        tuple(sorted(set(config.to_json()) - _BOOKKEEPING)))


def grid_base(config: Config) -> Config:
    """What the runs of one N_tau x N_pretrain grid share: the run with seed 0, both axes at the budget's values and,
    at N_tau = 0, the offline-only pre-training the grid substitutes there undone."""
    pretrain_data = "both" if config.n_tau == 0 and config.pretrain_data == "offline" else config.pretrain_data
    ref = reference(config)
    return dataclasses.replace(config, seed=0, n_tau=ref.n_tau, n_pretrain=ref.n_pretrain, pretrain_data=pretrain_data)


def grid_family(config: Config) -> str:
    """The hash shared by the OPT runs that form one N_tau x N_pretrain grid."""
    return setting_hash(grid_base(config))
