"""``opt-fast report``: a Markdown and an HTML page with PNG figures from run directories (docs/method.md §5, §7).

For every dataset and method it shows

* the final normalised score (the last evaluation, after fine-tuning): mean ± 95% CI over seeds (Student t), the
  paper's sums of rows, and the Total row (the sum of the per-dataset means, as in the paper);
* the IQM over all runs and datasets with a 95% stratified-bootstrap CI, as rliable defines them (IQM: the 25%
  trimmed mean of all run x dataset scores; bootstrap: runs resampled with replacement within each dataset;
  percentile interval). It is computed here with numpy: rliable 1.2 needs ``arch < 8``, whose 7.x fails to import
  with pandas 3, and it needs the same number of runs on every dataset;
* learning curves with the phase boundaries marked, the value-estimation bias (Q estimate minus Monte-Carlo return
  of the evaluation episodes) of Q_off and Q_on over training, and each N_tau x N_pretrain grid as a heat map.

Every column of ours names its data source ("generated data, reduced budget (quick)", from each run's
``summary.json``); the paper's numbers (docs/method.md §7) sit beside them as "paper, D4RL". Only finished runs (with a
``summary.json``) are counted; unfinished ones are listed.
"""
from __future__ import annotations

import datetime
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from opt_fast.ablate import describe, grid_base, grid_family, method_name, setting_hash
from opt_fast.config import PHASES, Config
from opt_fast.io import atomic_write, read_json, read_jsonl
from opt_fast.metrics import evaluations

# docs/method.md §7: final normalised scores of the paper (D4RL data, its full budget; 10 seeds on MuJoCo).
PAPER_SCORES: dict[str, dict[str, float]] = {
    "halfcheetah-random": {"TD3": 94.6, "TD3+OPT": 90.2},
    "hopper-random": {"TD3": 86.0, "TD3+OPT": 108.7},
    "walker2d-random": {"TD3": 0.1, "TD3+OPT": 88.0},
    "halfcheetah-medium": {"TD3": 93.4, "TD3+OPT": 97.0},
    "hopper-medium": {"TD3": 89.3, "TD3+OPT": 112.2},
    "walker2d-medium": {"TD3": 103.5, "TD3+OPT": 116.1},
    "antmaze-umaze": {"SPOT": 98.7, "SPOT+OPT": 99.7},
    "antmaze-umaze-diverse": {"SPOT": 55.9, "SPOT+OPT": 97.7},
    "antmaze-medium-play": {"SPOT": 91.1, "SPOT+OPT": 97.6},
    "antmaze-large-diverse": {"SPOT": 70.0, "SPOT+OPT": 90.1},
    "pen-cloned": {"SPOT": 114.8, "SPOT+OPT": 136.2},
    "hammer-cloned": {"SPOT": 84.0, "SPOT+OPT": 121.9},
    "door-cloned": {"SPOT": 1.6, "SPOT+OPT": 51.1},
    "relocate-cloned": {"SPOT": -0.2, "SPOT+OPT": -0.1},
}
PAPER_APPROXIMATE = {"relocate-cloned"}  # the paper gives "~ -0.2" and "~ -0.1"
# Rows the paper gives only as a sum (their single values were not recovered: "n/r").
PAPER_SUMS: list[tuple[str, tuple[str, ...], dict[str, float]]] = [
    ("3 x medium-replay (sum)", ("halfcheetah-medium-replay", "hopper-medium-replay", "walker2d-medium-replay"),
     {"TD3": 285.5, "TD3+OPT": 326.9}),
    ("medium-diverse + large-play (sum)", ("antmaze-medium-diverse", "antmaze-large-play"),
     {"SPOT": 150.0, "SPOT+OPT": 180.2}),
]
_MUJOCO = tuple(f"{family}-{kind}" for family in ("halfcheetah", "hopper", "walker2d")
                for kind in ("random", "medium", "medium-replay"))
_ANTMAZE = tuple(f"antmaze-{k}" for k in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play",
                                         "large-diverse"))
_ADROIT = tuple(f"{f}-cloned" for f in ("pen", "hammer", "door", "relocate"))
PAPER_TOTALS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (_MUJOCO, {"TD3": 752.4, "TD3+OPT": 939.1}),
    (_ANTMAZE, {"SPOT": 465.7, "SPOT+OPT": 565.3}),
    (_ADROIT, {"SPOT": 200.2, "SPOT+OPT": 309.1}),
]
PAPER_SOURCE = "paper, D4RL"


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    path: Path
    config: Config
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    """The evaluation records of its metrics.jsonl (the training records are left out)."""

    @property
    def dataset(self) -> str:
        """``family-kind`` (``hopper-medium-replay``): the paper's row name."""
        return f"{self.config.task.family}-{self.config.task.kind}"

    @property
    def source(self) -> str:
        assert self.summary is not None
        return source_label(self.summary["data_source"], self.config.budget)

    @property
    def final_score(self) -> float:
        """The last evaluation's normalised score (a finished run's)."""
        assert self.summary is not None
        return float(self.summary["final_score"])


def source_label(data_source: str, budget: str) -> str:
    """``generated data, reduced budget (quick)``, ``D4RL data, paper budget``, ``user file x.hdf5, ...``: only
    D4RL's own files (``opt_fast.data.d4rl.data_source``) are called D4RL data."""
    data = {"d4rl": "D4RL data", "generated": "generated data", "minari": "Minari data"}.get(data_source, data_source)
    return f"{data}, {'paper budget' if budget == 'paper' else f'reduced budget ({budget})'}"


def find_runs(paths: Iterable[Path]) -> list[Run]:
    """The runs at or below each path (a directory with ``config.json``), each once, sorted by path."""
    found: dict[Path, Run] = {}
    for root in map(Path, paths):
        if not root.is_dir():
            raise FileNotFoundError(f"report: {root} is not a directory")
        dirs = [root] if (root / "config.json").exists() else sorted(p.parent for p in root.rglob("config.json"))
        if not dirs:
            raise FileNotFoundError(f"report: no run directory (one with config.json) at or below {root}")
        for path in dirs:
            path = path.resolve()
            found[path] = Run(path, Config.from_json(read_json(path / "config.json")), _summary(path),
                              evaluations(read_jsonl(path / "metrics.jsonl")))
    return [found[p] for p in sorted(found)]


def _summary(path: Path) -> dict[str, Any] | None:
    """A finished run's ``summary.json``, else the summary of the last phase it was stopped after
    (``summary-<phase>.json``, written by ``opt-fast train --until``), else None."""
    if (path / "summary.json").exists():
        return read_json(path / "summary.json")
    partial = [path / f"summary-{phase}.json" for phase in reversed(PHASES[:3])]
    return next((read_json(p) for p in partial if p.exists()), None)


# ------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Stat:
    mean: float
    half_width: float | None
    """Half-width of the 95% Student-t interval of the mean; None for one value."""
    n: int

    def __str__(self) -> str:
        ci = "" if self.half_width is None else f" ± {self.half_width:.1f}"
        return f"{self.mean:.1f}{ci} (n={self.n})"


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Stat:
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_ci: no values")
    if array.size == 1:
        return Stat(float(array[0]), None, 1)
    t = stats.t.ppf(0.5 + confidence / 2, array.size - 1)
    return Stat(float(array.mean()), float(t * array.std(ddof=1) / math.sqrt(array.size)), int(array.size))


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% (scipy's 25% trimmed mean, as rliable's aggregate_iqm)."""
    return stats.trim_mean(scores, proportiontocut=0.25, axis=axis)


def stratified_bootstrap_iqm(per_task: list[np.ndarray], reps: int = 10_000, confidence: float = 0.95,
                             seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high): the IQM of all scores and its percentile bootstrap interval, resampling the runs of each
    task (dataset) with replacement, so every resample keeps each task's number of runs."""
    if not per_task or any(len(scores) == 0 for scores in per_task):
        raise ValueError("stratified_bootstrap_iqm: every task needs at least one score")
    rng = np.random.default_rng(seed)
    resampled = np.concatenate(
        [np.asarray(s, dtype=np.float64)[rng.integers(0, len(s), size=(reps, len(s)))] for s in per_task], axis=1)
    low, high = np.percentile(iqm(resampled, axis=1), [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(iqm(np.concatenate([np.asarray(s, dtype=np.float64) for s in per_task]))), float(low), float(high)


# ------------------------------------------------------------------------------------------ tables
@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Report:
    """What a report shows, for callers and tests; the pages are at ``markdown`` and ``html``."""

    markdown: Path
    html: Path
    final: dict[tuple[str, str], Stat]
    """(dataset, column) -> final score over seeds."""
    totals: dict[str, float]
    """column -> sum of its per-dataset means (columns with every dataset of the report)."""
    iqm: dict[str, tuple[float, float, float]]
    """column -> (IQM, CI low, CI high) over its runs and datasets."""
    grids: dict[str, dict[tuple[int, int], Stat]]
    """grid title -> (N_tau, N_pretrain) -> final score."""
    figures: list[Path]


def _columns(runs: list[Run]) -> dict[Path, str]:
    """Each run's column: ``<method and ablation settings> [<data source>]``; runs of one dataset that share it but
    differ in other settings get their setting hash appended."""
    base = {run.path: f"{describe(run.config)} [{run.source}]" for run in runs}
    hashes: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        hashes.setdefault((run.dataset, base[run.path]), set()).add(setting_hash(run.config))
    return {run.path: base[run.path] + (f" #{setting_hash(run.config)[:6]}"
                                        if len(hashes[(run.dataset, base[run.path])]) > 1 else "")
            for run in runs}


def _final_table(final: dict[tuple[str, str], Stat], datasets: list[str], columns: list[str],
                 methods: dict[str, str], paper: bool) -> tuple[Table, dict[str, float]]:
    def in_paper(method: str) -> bool:
        return any(method in PAPER_SCORES.get(d, {}) for d in datasets) or any(
            method in values and set(members) & set(datasets) for _, members, values in PAPER_SUMS)

    paper_methods = sorted({methods[c] for c in columns if in_paper(methods[c])}) if paper else []
    headers = ["dataset"] + columns + [f"{m} [{PAPER_SOURCE}]" for m in paper_methods]
    rows = []
    for dataset in datasets:
        ours = [str(final[(dataset, c)]) if (dataset, c) in final else "—" for c in columns]
        summed = any(dataset in members for _, members, _ in PAPER_SUMS)
        theirs = [("~" if dataset in PAPER_APPROXIMATE else "") + f"{PAPER_SCORES[dataset][m]:.1f}"
                  if m in PAPER_SCORES.get(dataset, {}) else ("n/r" if summed else "—") for m in paper_methods]
        rows.append([dataset] + ours + theirs)

    def column_sum(column: str, members: Sequence[str]) -> float | None:
        """The sum of a column's means over ``members``, if it has them all."""
        means = [final[(d, column)].mean for d in members if (d, column) in final]
        return sum(means) if len(means) == len(members) else None

    for label, members, values in PAPER_SUMS:
        if set(members) <= set(datasets):
            sums = [column_sum(c, members) for c in columns]
            rows.append([label] + ["—" if s is None else f"{s:.1f}" for s in sums]
                        + [f"{values[m]:.1f}" if m in values else "—" for m in paper_methods])
    totals = {c: s for c in columns if (s := column_sum(c, datasets)) is not None}
    paper_total = next((values for members, values in PAPER_TOTALS if set(members) == set(datasets)), {})
    rows.append([f"Total ({len(datasets)})"] + [f"{totals[c]:.1f}" if c in totals else "— (not every dataset)"
                                                for c in columns]
                + [f"{paper_total[m]:.1f}" if m in paper_total else "— (other datasets)" for m in paper_methods])
    return Table(headers, rows), totals


# ------------------------------------------------------------------------------------------ figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    _pyplot().close(fig)


def _series(runs: list[Run], key: str, online: bool) -> dict[int, list[float]]:
    """step -> the value of ``key`` at that step in every run that has it there (the last record per step: the
    collection's end and the pre-training's end share an env step)."""
    per_run = []
    for run in runs:
        points: dict[int, float] = {}
        for record in run.metrics:
            if (record["phase"] != "offline") != online or record.get(key) is None:
                continue
            points[record["online_step" if online else "offline_step"]] = float(record[key])
        per_run.append(points)
    common = set.intersection(*(set(p) for p in per_run)) if per_run else set()
    return {step: [p[step] for p in per_run] for step in sorted(common)}


def _curve_figure(by_column: dict[str, list[Run]], keys: list[tuple[str, str, str]], title: str, ylabel: str,
                  path: Path) -> Path:
    """Two panels -- offline (gradient steps) and online (env steps) -- with each column's mean and 95% CI band
    over seeds for every (metric key, line style, legend suffix); a dotted line at every N_tau marks where the
    collection ends and pre-training and fine-tuning start."""
    plt = _pyplot()
    fig, (ax_off, ax_on) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True,
                                        gridspec_kw={"width_ratios": [1, 2]})
    colors = plt.get_cmap("tab10" if len(by_column) <= 10 else "tab20").colors
    for index, (column, runs) in enumerate(by_column.items()):
        color = colors[index % len(colors)]
        for key, style, suffix in keys:
            for ax, online in ((ax_off, False), (ax_on, True)):
                if key == "q_on_bias" and not online:
                    continue  # Q_on is untrained (random) during the offline phase
                series = _series(runs, key, online)
                if not series:
                    continue
                steps = np.array(list(series))
                stat = [mean_ci(v) for v in series.values()]
                mean = np.array([s.mean for s in stat])
                half = np.array([s.half_width or 0.0 for s in stat])
                ax.plot(steps, mean, style, color=color, label=f"{column}{suffix}" if online else None)
                ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.15)
    n_taus = sorted({run.config.n_tau for runs in by_column.values() for run in runs if run.config.opt})
    for n_tau in n_taus:
        ax_on.axvline(n_tau, color="grey", linestyle=":", linewidth=1)
        ax_on.annotate(f"N_tau={n_tau}", (n_tau, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                       va="top", ha="right", fontsize=7, color="grey")
    ax_off.set_title("offline pre-training")
    ax_off.set_xlabel("gradient steps")
    ax_off.set_ylabel(ylabel)
    ax_on.set_title("online: collection | pre-training of Q_on, fine-tuning")
    ax_on.set_xlabel("env steps")
    ax_on.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14))  # below: the lines stay visible
    fig.suptitle(title)
    _save(fig, path)
    return path


def _wall_clock_figure(by_column: dict[str, list[Run]], title: str, path: Path) -> Path | None:
    """Score against the run's wall-clock seconds (summed over the processes that ran it), a line per run coloured
    by column; None when no run's records carry wall-clock time (runs made before they did)."""
    timed = {column: [run for run in runs if any("wall_seconds" in r for r in run.metrics)]
             for column, runs in by_column.items()}
    if not any(timed.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab10" if len(by_column) <= 10 else "tab20").colors
    for index, (column, runs) in enumerate(timed.items()):
        for number, run in enumerate(runs):
            points = [(r["wall_seconds"], r["score"]) for r in run.metrics if "wall_seconds" in r]
            ax.plot(*zip(*points), "-", color=colors[index % len(colors)], alpha=0.8, linewidth=1,
                    label=column if number == 0 else None)
    ax.set_xlabel("wall-clock seconds (summed over resumes)")
    ax.set_ylabel("normalised score")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14))
    fig.suptitle(title)
    _save(fig, path)
    return path


def _heatmap(cells: dict[tuple[int, int], Stat], title: str, path: Path) -> Path:
    plt = _pyplot()
    n_taus = sorted({n_tau for n_tau, _ in cells})
    n_pretrains = sorted({n_pre for _, n_pre in cells})
    values = np.full((len(n_pretrains), len(n_taus)), np.nan)
    for (n_tau, n_pre), stat in cells.items():
        values[n_pretrains.index(n_pre), n_taus.index(n_tau)] = stat.mean
    fig, ax = plt.subplots(figsize=(1.6 * len(n_taus) + 2.5, 1.0 * len(n_pretrains) + 1.8))
    image = ax.imshow(values, cmap="viridis", origin="lower", aspect="auto")
    for (n_tau, n_pre), stat in cells.items():
        ci = "" if stat.half_width is None else f"\n± {stat.half_width:.1f}"
        dark = image.norm(stat.mean) < 0.6  # viridis is dark at the low end, light at the high end
        ax.text(n_taus.index(n_tau), n_pretrains.index(n_pre), f"{stat.mean:.1f}{ci}", ha="center", va="center",
                color="white" if dark else "black", fontsize=8)
    ax.set_xticks(range(len(n_taus)), [str(v) for v in n_taus])
    ax.set_yticks(range(len(n_pretrains)), [str(v) for v in n_pretrains])
    ax.set_xlabel("N_tau (env steps collected before fine-tuning)")
    ax.set_ylabel("N_pretrain (updates of Q_on)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="final normalised score")
    _save(fig, path)
    return path


# ------------------------------------------------------------------------------------------ the report
def build_report(paths: Iterable[Path], out: Path, paper: bool = True, bootstrap_reps: int = 10_000,
                 command: str | None = None) -> Report:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*.png`` for the runs at or below ``paths``;
    ``command``, the command line that asked for the report, is quoted in its provenance."""
    out = Path(out)
    runs = find_runs(paths)
    finished = [run for run in runs if run.summary is not None and run.summary.get("final_score") is not None]
    mechanism = _mechanism(runs, out / "figures")
    if not finished and not mechanism:
        raise ValueError(f"report: none of the {len(runs)} run(s) found has finished (no summary.json) or been "
                         "pre-trained (no evaluation at the end of online pre-training)")
    if not finished:
        return _mechanism_report(runs, out, mechanism, command)
    column_of = _columns(finished)
    columns = sorted(set(column_of.values()))
    methods = {column_of[run.path]: method_name(run.config) for run in finished}
    datasets = sorted({run.dataset for run in finished})
    scores: dict[tuple[str, str], list[float]] = {}
    for run in finished:
        scores.setdefault((run.dataset, column_of[run.path]), []).append(run.final_score)
    final = {key: mean_ci(values) for key, values in scores.items()}
    final_table, totals = _final_table(final, datasets, columns, methods, paper)

    iqms, iqm_table = _iqm_table(scores, datasets, columns, bootstrap_reps)
    grids, grid_items = _grids(finished, out / "figures")
    curves = [_curves(dataset, [run for run in finished if run.dataset == dataset], column_of, out / "figures")
              for dataset in datasets]
    run_table = Table(["run directory", "method [data]", "seed", "final score"],
                      [[str(run.path), column_of.get(run.path, describe(run.config)), str(run.config.seed),
                        f"{run.final_score:.1f}" if run.path in column_of else "unfinished"]
                       for run in runs])
    sources = sorted({run.source for run in finished})
    intro = [
        f"Generated by `opt-fast report` on {datetime.date.today().isoformat()} from {len(finished)} finished "
        f"run(s) ({len(runs) - len(finished)} unfinished, not counted).",
        "Score: D4RL-normalised return of the deterministic policy at the last evaluation (after fine-tuning). "
        "Our data: " + "; ".join(sources) + "." + (
            f" Beside them: the paper's numbers (docs/method.md §7), labelled [{PAPER_SOURCE}]: D4RL data, the paper's "
            "full budget, 10 seeds; n/r = not recovered (the paper gives only the sum)." if paper else ""),
        "Numbers on generated data or at a reduced budget measure the same methods under other conditions; they "
        "are not comparable one-to-one with the paper's.",
    ]
    sections: list[tuple[str, list[Table | str | Path]]] = [
        ("Final normalised score (mean ± 95% CI over seeds)", [final_table]),
        ("IQM over runs and datasets (95% stratified-bootstrap CI)",
         [f"{bootstrap_reps} bootstrap resamples of the runs within each dataset; percentile interval.", iqm_table]),
    ]
    if grid_items:
        sections.append(("Ablation grids: final score by N_tau and N_pretrain", grid_items))
    if mechanism:
        sections.append((MECHANISM_HEADING, mechanism))
    sections.append(("Learning curves", [figure for figures, _ in curves for figure in figures]))
    sections.append(("Value-estimation bias of Q_off and Q_on", [bias for _, bias in curves]))
    sections.append(("Provenance", _provenance(finished, command)))
    sections.append(("Runs", [run_table]))
    markdown_path, html_path = out / "report.md", out / "report.html"
    _write_pages(markdown_path, html_path, intro, sections)
    figures = [item for item in grid_items if isinstance(item, Path)] + [
        item for figures, bias in curves for item in [*figures, bias] if isinstance(item, Path)]
    return Report(markdown_path, html_path, final, totals, iqms, grids, figures)


MECHANISM_HEADING = "Value-estimation bias at the end of online pre-training (the mechanism)"
_MECHANISM_NOTE = (
    "OPT's central question (docs/method.md §1): at the end of online pre-training, before fine-tuning, how far are Q_off "
    "and the pre-trained Q_on from the Monte-Carlo return of the online policy's episodes (the frozen offline "
    "policy, deterministic, on the evaluation episodes)? Bias = Q_1(s_t, a_t) - discounted return, averaged over "
    "the steps whose return is reliable; mean ± 95% CI over seeds. Rows differ in how Q_on was pre-trained: "
    "TD3+OPT = meta-adaptation on offline and online data (the paper's), 'no meta-adaptation' = plain "
    "L_off + L_on, 'Q_on on offline/online data' = plain TD on one buffer, N_pretrain=0 = a random Q_on, "
    "alpha_in=x = meta-adaptation with another inner step size.")


def _pretrain_end(run: Run) -> dict[str, Any] | None:
    """The evaluation at the end of an OPT run's online pre-training, if it measured the value bias."""
    record = next((r for r in run.metrics if r["phase"] == "pretrain"), None)
    return record if run.config.opt and record is not None and record.get("q_off_bias") is not None else None


def _mechanism(runs: list[Run], figures_dir: Path) -> list[Table | str | Path]:
    """The value-estimation bias of Q_off and Q_on at the end of online pre-training, by dataset and pre-training
    setting: a table and a figure (empty where no run has reached that point)."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        record = _pretrain_end(run)
        if record is not None and run.summary is not None:  # finished, or stopped after a phase (--until)
            cells.setdefault((run.dataset, f"{describe(run.config)} [{run.source}]"), []).append(record)
    if not cells:
        return []
    keys = sorted(cells)
    stats_of = {key: {name: mean_ci(r[name] for r in cells[key]) for name in ("mc_return", "q_off_bias", "q_on_bias")}
                for key in keys}
    table = Table(["dataset", "Q_on pre-training [data]", "Monte-Carlo return", "Q_off bias", "Q_on bias"],
                  [[dataset, setting, str(stats_of[(dataset, setting)]["mc_return"]),
                    str(stats_of[(dataset, setting)]["q_off_bias"]), str(stats_of[(dataset, setting)]["q_on_bias"])]
                   for dataset, setting in keys])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(keys)), 4.5))
    x = np.arange(len(keys))
    for offset, name, label in ((-0.2, "q_off_bias", "Q_off"), (0.2, "q_on_bias", "Q_on")):
        values = [stats_of[key][name] for key in keys]
        ax.bar(x + offset, [v.mean for v in values], 0.4, yerr=[v.half_width or 0.0 for v in values], capsize=3,
               label=label)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{dataset}\n{setting.split(' [')[0]}" for dataset, setting in keys], fontsize=7,
                  rotation=20, ha="right")
    ax.set_ylabel("Q - Monte-Carlo return")
    ax.set_title("Value-estimation bias at the end of online pre-training (mean, 95% CI over seeds)")
    ax.legend()
    path = figures_dir / "mechanism-bias.png"
    _save(fig, path)
    return [_MECHANISM_NOTE, table, path, *_value_level_items(runs, figures_dir)]


_VALUE_LEVEL_NOTE = (
    "How far Q_off's value level gets through offline pre-training, by budget: Q_off(s_t, a_t) as a percentage of the "
    "Monte-Carlo return on the offline policy's evaluation episodes at each offline evaluation (100 = the level of "
    "the return; mean and 95% CI over seeds), for the runs at the paper's protocol of each budget (ablations share these offline "
    "phases). A level below 100 at the end of the phase under-estimates by scale, whatever the objective.")


def value_levels(runs: list[Run]) -> dict[tuple[str, str], dict[int, Stat]]:
    """(dataset, data source) -> offline step -> Q_off as % of the Monte-Carlo return over the seeds, from the
    TD3+OPT runs at their budget's protocol that reached the end of online pre-training (the steps every seed
    evaluated)."""
    ratios: dict[tuple[str, str], list[dict[int, float]]] = {}
    for run in runs:
        if _pretrain_end(run) is None or run.summary is None or describe(run.config) != "TD3+OPT":
            continue
        points = {r["offline_step"]: 100.0 * r["q_off_q"] / r["mc_return"] for r in run.metrics
                  if r["phase"] == "offline" and r.get("q_off_q") is not None and r.get("mc_return")}
        if points:
            ratios.setdefault((run.dataset, run.source), []).append(points)
    common = {key: sorted(set.intersection(*(set(p) for p in per_run))) for key, per_run in ratios.items()}
    return {key: {step: mean_ci([p[step] for p in ratios[key]]) for step in steps}
            for key, steps in sorted(common.items()) if steps}


def _value_level_items(runs: list[Run], figures_dir: Path) -> list[Table | str | Path]:
    """The value levels as a table (first and last offline evaluation) and a figure, a panel per dataset and a
    line per data source; empty where no run has them."""
    levels = value_levels(runs)
    if not levels:
        return []
    table = Table(["dataset", "data", "Q_off, % of the return: first offline evaluation",
                   "end of offline pre-training"],
                  [[dataset, source, f"step {min(by_step)}: {by_step[min(by_step)]}",
                    f"step {max(by_step)}: {by_step[max(by_step)]}"]
                   for (dataset, source), by_step in levels.items()])
    datasets = sorted({dataset for dataset, _ in levels})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.0 * len(datasets), 4.0), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (name, source), by_step in levels.items():
            if name != dataset:
                continue
            mean = np.array([s.mean for s in by_step.values()])
            half = np.array([s.half_width or 0.0 for s in by_step.values()])
            ax.plot(list(by_step), mean, label=f"{source} (n={next(iter(by_step.values())).n})")
            ax.fill_between(list(by_step), mean - half, mean + half, alpha=0.15)
        ax.axhline(100.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_title(dataset)
        ax.set_xlabel("offline gradient steps")
        ax.set_ylabel("Q_off, % of the Monte-Carlo return")
        ax.legend(fontsize=7)
    fig.suptitle("Q_off's value level through offline pre-training", y=1.02)
    path = figures_dir / "value-level.png"
    _save(fig, path)
    return [_VALUE_LEVEL_NOTE, table, path]


def _mechanism_report(runs: list[Run], out: Path, mechanism: list[Table | str | Path], command: str | None) -> Report:
    """The report of runs stopped after online pre-training (none fine-tuned yet): the mechanism and provenance."""
    stopped = [run for run in runs if run.summary is not None and _pretrain_end(run) is not None]
    intro = [f"Generated by `opt-fast report` on {datetime.date.today().isoformat()} from {len(stopped)} run(s) "
             "stopped after online pre-training (`opt-fast train --until pretrain`); none has been fine-tuned yet.",
             "Numbers on generated data or at a reduced budget measure the same methods under other conditions; they "
             "are not comparable one-to-one with the paper's."]
    sections: list[tuple[str, list[Table | str | Path]]] = [(MECHANISM_HEADING, mechanism),
                                                             ("Provenance", _provenance(stopped, command))]
    markdown_path, html_path = out / "report.md", out / "report.html"
    _write_pages(markdown_path, html_path, intro, sections)
    return Report(markdown_path, html_path, {}, {}, {}, {}, [item for item in mechanism if isinstance(item, Path)])


# Config fields that size a protocol: the provenance lists each distinct combination.
_PROTOCOL_FIELDS = ("backbone", "offline_steps", "vae_steps", "n_tau", "n_pretrain", "online_steps", "utd",
                    "batch_size", "eval_every", "eval_episodes", "env_version")
# Dataset metadata worth quoting (written by opt-fast's generators).
_DATA_FIELDS = ("generator", "budget", "seed", "env_id", "medium_target_reached", "medium_policy_step", "recipe",
                "gymnasium_robotics")


def _provenance(finished: list[Run], command: str | None) -> list[Table | str | Path]:
    """How the numbers were made, from the runs' own records: command, code, packages, machine, protocol sizes,
    seeds, data files and wall time."""
    summaries = {run.path: run.summary or {} for run in finished}  # finished runs have one

    def distinct(key: str) -> str:
        values = sorted({str(summaries[run.path].get(key, "not recorded")) for run in finished})
        return "; ".join(values)

    items: list[Table | str | Path] = []
    if command:
        items.append(f"Report command: `{command}`")
    packages = sorted({f"{name} {version}" for run in finished
                       for name, version in summaries[run.path].get("env_packages", {}).items()})
    items += [
        f"Code: {distinct('code')}",
        f"Packages: torch {distinct('torch')}; " + "; ".join(packages),
        f"Machine: {distinct('machine')}; torch threads per run: {distinct('torch_threads')}",
        "Seeds: " + ", ".join(str(s) for s in sorted({run.config.seed for run in finished})),
    ]
    protocols = sorted({tuple(str(getattr(run.config, f)) for f in _PROTOCOL_FIELDS) + (run.config.budget,)
                        for run in finished})
    items.append(Table([*_PROTOCOL_FIELDS, "budget"], [list(p) for p in protocols]))
    # Keyed by path and digest: one path can hold different files (the same generation command makes other data on
    # another CPU vendor), and each must show its own provenance.
    data_rows = {}
    for run in finished:
        summary = summaries[run.path]
        meta = summary.get("dataset_metadata", {})
        path, digest = summary.get("dataset_path", "not recorded"), summary.get("data_digest", "not recorded")[:12]
        data_rows[path, digest] = [path, digest, summary["data_source"],
                                   ", ".join(f"{key}={meta[key]}" for key in _DATA_FIELDS if key in meta)]
    items.append(Table(["data file", "digest", "source", "metadata"], [data_rows[key] for key in sorted(data_rows)]))
    seconds: dict[str, dict[str, list[float]]] = {}
    for run in finished:
        # A seed batch's phases took their time for all its seeds together: each seed's share is the time / S.
        batch_size = len(summaries[run.path].get("seed_batch") or [summaries[run.path]["seed"]])
        for phase, value in summaries[run.path].get("phase_seconds", {}).items():
            seconds.setdefault(method_name(run.config), {}).setdefault(phase, []).append(value / batch_size)
    phases = ("offline", "collect", "pretrain", "finetune")
    items.append("Wall time per run and phase, seconds (mean over runs; a run that took its offline phase from the "
                 "shared cache counts the run that computed it; a seed trained in a batch of S counts 1/S of the "
                 "batch's time):")
    items.append(Table(["method", *phases, "runs"],
                       [[method, *(f"{np.mean(by_phase[p]):.0f}" if p in by_phase else "—" for p in phases),
                         str(max(len(v) for v in by_phase.values()))]
                        for method, by_phase in sorted(seconds.items())]))
    return items


def _iqm_table(scores: dict[tuple[str, str], list[float]], datasets: list[str], columns: list[str],
               reps: int) -> tuple[dict[str, tuple[float, float, float]], Table]:
    iqms = {}
    rows = []
    for column in columns:
        per_task = [np.array(scores[(d, column)]) for d in datasets if (d, column) in scores]
        iqms[column] = value, low, high = stratified_bootstrap_iqm(per_task, reps=reps)
        rows.append([column, str(len(per_task)), str(sum(map(len, per_task))), f"{value:.1f} [{low:.1f}, {high:.1f}]"])
    return iqms, Table(["method [data]", "datasets", "runs", "IQM [95% CI]"], rows)


def _grids(finished: list[Run], figures_dir: Path) -> tuple[dict[str, dict[tuple[int, int], Stat]],
                                                            list[Table | str | Path]]:
    """Every N_tau x N_pretrain grid (OPT runs of one dataset and data source that differ only in the two axes)
    with two or more cells: its final scores, as a table and a heat map."""
    families: dict[tuple[str, str, str], list[Run]] = {}
    for run in finished:
        if run.config.opt:
            families.setdefault((run.dataset, grid_family(run.config), run.source), []).append(run)
    grids: dict[str, dict[tuple[int, int], Stat]] = {}
    items: list[Table | str | Path] = []
    for (dataset, family, source), members in sorted(families.items()):
        cell_scores: dict[tuple[int, int], list[float]] = {}
        for run in members:
            cell_scores.setdefault((run.config.n_tau, run.config.n_pretrain), []).append(run.final_score)
        if len(cell_scores) < 2:
            continue
        title = f"{dataset}: {describe(grid_base(members[0].config))}, N_tau x N_pretrain [{source}]"
        cells = grids[title] = {cell: mean_ci(values) for cell, values in cell_scores.items()}
        n_taus = sorted({n_tau for n_tau, _ in cells})
        n_pretrains = sorted({n_pre for _, n_pre in cells})
        table = Table(["N_pretrain \\ N_tau"] + [str(v) for v in n_taus],
                      [[str(n_pre)] + [str(cells[(n_tau, n_pre)]) if (n_tau, n_pre) in cells else "—"
                                       for n_tau in n_taus] for n_pre in n_pretrains])
        items += [title, table, _heatmap(cells, title, figures_dir / f"grid-{dataset}-{family[:8]}.png")]
    return grids, items


def _curves(dataset: str, runs: list[Run], column_of: dict[Path, str],
            figures_dir: Path) -> tuple[list[Path], Path | str]:
    """The learning curves (against steps and, where the records carry it, against wall-clock seconds) and the
    value-estimation bias of one dataset's runs, a line per column; the bias is a note instead where no evaluation
    measured it (episodes too short for a reliable Monte-Carlo return)."""
    by_column: dict[str, list[Run]] = {}
    for run in runs:
        by_column.setdefault(column_of[run.path], []).append(run)
    by_column = dict(sorted(by_column.items()))
    steps = _curve_figure(by_column, [("score", "-", "")],
                           f"{dataset}: normalised score of the deterministic policy (mean, 95% CI over seeds)",
                           "normalised score", figures_dir / f"curves-{dataset}.png")
    wall = _wall_clock_figure(by_column, f"{dataset}: normalised score against wall-clock time (each run)",
                              figures_dir / f"wall-clock-{dataset}.png")
    scores = [steps] + ([] if wall is None else [wall])
    if not any("q_off_bias" in record for run in runs for record in run.metrics):
        return scores, (f"{dataset}: no value-estimation bias. Every evaluation episode was cut by the time limit "
                        "before the Monte-Carlo return of any of its steps became reliable (it needs "
                        "log(0.01)/log(gamma) steps after the step: 459 at gamma = 0.99; Adroit's episodes last "
                        "100-200 steps).")
    bias = _curve_figure(by_column, [("q_off_bias", "-", " Q_off"), ("q_on_bias", "--", " Q_on")],
                         f"{dataset}: value-estimation bias, Q(s, a) - Monte-Carlo return on the evaluation episodes",
                         "bias", figures_dir / f"bias-{dataset}.png")
    return scores, bias


def _write_pages(markdown_path: Path, html_path: Path, intro: list[str],
                 sections: list[tuple[str, list[Table | str | Path]]]) -> None:
    base = markdown_path.parent
    md = ["# opt-fast report", ""] + [line + "\n" for line in intro]
    body = ["<h1>opt-fast report</h1>"] + [f"<p>{html.escape(line)}</p>" for line in intro]
    for heading, items in sections:
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, Table):
                md += [item.markdown(), ""]
                body.append(item.html())
            elif isinstance(item, Path):
                relative = item.relative_to(base).as_posix()
                md += [f"![{item.stem}]({relative})", ""]
                body.append(f'<p><img src="{html.escape(relative)}" alt="{html.escape(item.stem)}"></p>')
            else:
                md += [item, ""]
                body.append(f"<p>{html.escape(item)}</p>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,"
             "th:first-child{text-align:left}img{max-width:100%}")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>opt-fast report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write(markdown_path, lambda f: f.write("\n".join(md).encode()))
    atomic_write(html_path, lambda f: f.write(page.encode()))
