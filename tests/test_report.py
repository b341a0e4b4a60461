"""Reports: statistics against hand-computed and rliable values, the paper's rows beside ours, and a report of real
tiny runs whose numbers are checked against the runs' own metrics."""
import dataclasses
import html
import json
import math
import shutil

import numpy as np
import pytest
import torch
from test_sweep import TINY, write_tiny_dataset

from opt_fast.ablate import AblationSpec, describe, expand, variant_overrides
from opt_fast.config import Config, resolve
from opt_fast.report import (PAPER_SOURCE, Stat, _final_table, build_report, find_runs, iqm, mean_ci,
                             stratified_bootstrap_iqm, value_levels)
from opt_fast.sweep import run_sweep

T_975 = {1: 12.706204736, 2: 4.302652730}  # Student t quantiles (two-sided 95%) for 1 and 2 degrees of freedom


def test_mean_ci_is_the_student_t_interval():
    stat = mean_ci([1.0, 2.0, 3.0])
    assert stat.mean == 2.0 and stat.n == 3
    assert stat.half_width == pytest.approx(T_975[2] * 1.0 / math.sqrt(3))
    assert mean_ci([7.0]) == Stat(7.0, None, 1)
    assert str(stat) == "2.0 ± 2.5 (n=3)"
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_iqm_and_its_stratified_bootstrap():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    # Stratified: every resample keeps four runs of each task, so the IQM of {0 x 4, 100 x 4} is always 50; a
    # bootstrap over the pooled runs would not be constant.
    assert stratified_bootstrap_iqm([np.zeros(4), np.full(4, 100.0)], reps=500) == (50.0, 50.0, 50.0)
    # rliable 1.2.0 (get_interval_estimates, aggregate_iqm, 50000 reps) on this 5-run x 3-task matrix gives
    # 56.667 [48.333, 64.222].
    scores = np.array([[10., 55., 80.], [20., 60., 95.], [35., 40., 70.], [5., 75., 88.], [50., 45., 99.]])
    value, low, high = stratified_bootstrap_iqm([scores[:, t] for t in range(3)], reps=50_000)
    assert value == pytest.approx(56.6667, abs=1e-3)
    assert low == pytest.approx(48.333, abs=0.5) and high == pytest.approx(64.222, abs=0.5)
    # Tasks may have different numbers of runs (rliable needs a full matrix).
    value, low, high = stratified_bootstrap_iqm([np.array([1.0, 2.0, 3.0]), np.array([10.0])], reps=2000)
    assert low <= value <= high
    with pytest.raises(ValueError, match="at least one score"):
        stratified_bootstrap_iqm([np.array([])])


def test_paper_rows_sums_and_total_sit_beside_ours():
    mujoco = [f"{f}-{k}" for f in ("halfcheetah", "hopper", "walker2d") for k in ("random", "medium", "medium-replay")]
    ours = "TD3+OPT [generated data, reduced budget (quick)]"
    final = {(d, ours): Stat(float(i), 1.0, 5) for i, d in enumerate(mujoco)}
    table, totals = _final_table(final, sorted(mujoco), [ours], {ours: "TD3+OPT"}, paper=True)
    assert table.headers == ["dataset", ours, f"TD3+OPT [{PAPER_SOURCE}]"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["hopper-random"] == [str(final[("hopper-random", ours)]), "108.7"]
    assert rows["hopper-medium-replay"][1] == "n/r"  # the paper gives the three medium-replay rows as a sum
    replay = sum(final[(d, ours)].mean for d in mujoco if d.endswith("medium-replay"))
    assert rows["3 x medium-replay (sum)"] == [f"{replay:.1f}", "326.9"]
    assert totals == {ours: sum(range(9))}
    assert rows["Total (9)"] == [f"{sum(range(9)):.1f}", "939.1"]
    # On other datasets than the paper's nine, its total is not shown, and a column lacking a dataset has none.
    final.pop(("walker2d-random", ours))
    table, totals = _final_table(final, sorted(mujoco)[:-1] + ["walker2d-expert"], [ours], {ours: "TD3+OPT"}, True)
    assert totals == {} and table.rows[-1][1:] == ["— (not every dataset)", "— (other datasets)"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of the baseline and of a 2 x 2 N_tau x N_pretrain grid of OPT on a tiny dataset."""
    root = tmp_path_factory.mktemp("report")
    dataset = write_tiny_dataset(root / "hopper_random-v2.hdf5")
    spec = AblationSpec(datasets=["hopper-random"], seeds=[0, 1], variants=variant_overrides(["opt", "baseline"]),
                        budget="smoke", n_tau=[0, 40], n_pretrain=[0, 10], base={**TINY, "dataset": str(dataset)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(expand(spec)[0], root / "runs", workers=1)
    finally:
        torch.set_num_threads(threads)
    return root / "runs"


def test_report_of_real_runs_shows_their_numbers(runs, tmp_path):
    report = build_report([runs], tmp_path / "report", bootstrap_reps=2000)
    # The last evaluation of each run, grouped by what the run is, recomputed from metrics.jsonl.
    finals: dict[str, list[float]] = {}
    for config_path in runs.rglob("config.json"):
        config = Config.from_json(json.loads(config_path.read_text()))
        last = [json.loads(line) for line in (config_path.parent / "metrics.jsonl").read_text().splitlines()][-1]
        assert last["phase"] == "finetune" and last["online_step"] == 100
        finals.setdefault(describe(config), []).append(last["score"])
    assert len(finals) == 5 and all(len(v) == 2 for v in finals.values())
    source = "generated data, reduced budget (smoke)"
    assert {column for _, column in report.final} == {f"{label} [{source}]" for label in finals}
    for label, values in finals.items():
        stat = report.final[("hopper-random", f"{label} [{source}]")]
        assert stat.mean == pytest.approx(np.mean(values)) and stat.n == 2
        assert stat.half_width == pytest.approx(T_975[1] * np.std(values, ddof=1) / math.sqrt(2))
        # One dataset: the total is its mean; the IQM of two runs trims nothing, so it is their mean too.
        assert report.totals[f"{label} [{source}]"] == pytest.approx(np.mean(values))
        value, low, high = report.iqm[f"{label} [{source}]"]
        assert value == pytest.approx(np.mean(values)) and min(values) <= low <= value <= high <= max(values)
    [(title, cells)] = report.grids.items()
    assert title == f"hopper-random: TD3+OPT, N_tau x N_pretrain [{source}]"
    assert cells[(0, 0)].mean == pytest.approx(np.mean(finals["TD3+OPT N_tau=0, N_pretrain=0"]))
    assert cells[(0, 10)].mean == pytest.approx(np.mean(finals["TD3+OPT N_tau=0, N_pretrain=10, Q_on on offline data"]))
    assert cells[(40, 10)].mean == pytest.approx(np.mean(finals["TD3+OPT N_tau=40, N_pretrain=10"]))

    markdown = report.markdown.read_text()
    td3 = report.final[("hopper-random", f"TD3 [{source}]")]
    assert f"\n| hopper-random | {td3} | " in markdown  # columns sorted: the baseline's first
    assert f"TD3 [{PAPER_SOURCE}]" in markdown and "| 86.0 |" in markdown and "| 108.7 |" in markdown
    page = report.html.read_text()
    # Tables: final scores, IQM, the grid, the mechanism (every OPT run's end of pre-training), provenance (3), runs.
    assert page.count("<table>") == 8 and html.escape(str(td3)) in page
    assert "## Value-estimation bias at the end of online pre-training (the mechanism)" in markdown
    names = sorted(p.name for p in report.figures)
    assert names[:2] == ["bias-hopper-random.png", "curves-hopper-random.png"] and names[2].startswith("grid-")
    assert names[-1] == "wall-clock-hopper-random.png"  # the score against wall-clock seconds
    for figure in report.figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{figure.name}" in markdown and f'src="figures/{figure.name}"' in page


def test_provenance_comes_from_the_runs_own_records(runs, tmp_path):
    report = build_report([runs], tmp_path / "report", bootstrap_reps=100, command="opt-fast report runs --out x")
    provenance = report.markdown.read_text().split("## Provenance")[1].split("## Runs")[0]
    summary = json.loads(next(runs.rglob("summary.json")).read_text())
    assert "Report command: `opt-fast report runs --out x`" in provenance
    assert f"Code: {summary['code']}" in provenance and summary["code"].startswith("0.1.0")
    assert f"Machine: {summary['machine']}; torch threads per run: 1" in provenance
    assert "Seeds: 0, 1" in provenance and "torch " + torch.__version__ in provenance
    # The protocol sizes: a row per N_tau x N_pretrain cell and one for the baseline (the budget's N_tau), and
    # the dataset file with its generator metadata.
    assert "| td3 | 40 | 50 | 40 | 10 | 100 | 2 | 16 |" in provenance and provenance.count("| td3 |") == 5
    assert f"| {summary['dataset_path']} | {summary['data_digest'][:12]} | generated |" in provenance
    assert "| TD3+OPT |" in provenance and "| TD3 |" in provenance


def test_one_data_path_holding_two_files_gets_a_row_each(runs, tmp_path):
    """The same generation command makes other data on another CPU vendor, at the same path: both files are listed."""
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    summary_path = next(copy.rglob("summary.json"))
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "data_digest": "0123456789ab" + summary["data_digest"][12:]}))
    report = build_report([copy], tmp_path / "report", bootstrap_reps=100)
    provenance = report.markdown.read_text().split("## Provenance")[1].split("## Runs")[0]
    assert f"| {summary['dataset_path']} | 0123456789ab | generated |" in provenance
    assert f"| {summary['dataset_path']} | {summary['data_digest'][:12]} | generated |" in provenance


def test_a_dataset_without_bias_measurements_gets_a_note_instead_of_a_figure(runs, tmp_path):
    """As Adroit: 200-step evaluation episodes leave no step with a reliable Monte-Carlo return."""
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for metrics in copy.rglob("metrics.jsonl"):
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        metrics.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.endswith(("_bias", "_q"))
                                               and k != "mc_return"}) + "\n" for r in records))
    report = build_report([copy], tmp_path / "report", bootstrap_reps=100)
    markdown = report.markdown.read_text()
    assert "hopper-random: no value-estimation bias. Every evaluation episode was cut" in markdown
    assert not any(p.name.startswith("bias-") for p in report.figures) and "curves-hopper-random.png" in markdown


def test_report_lists_unfinished_runs_and_refuses_empty_input(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    # A copy of one run without its summary counts as unfinished: listed, not counted.
    one = next(runs.rglob("summary.json")).parent
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (unfinished / name).write_bytes((one / name).read_bytes())
    with pytest.raises(ValueError, match="none of the 1 run"):
        build_report([unfinished], tmp_path / "out")
    report = build_report([one, unfinished], tmp_path / "out", bootstrap_reps=100)
    markdown = report.markdown.read_text()
    assert "from 1 finished run(s) (1 unfinished, not counted)" in markdown
    assert f"| {unfinished.resolve()} |" in markdown and "| unfinished |" in markdown


def test_a_batched_seed_counts_its_share_of_the_batch_wall_time(runs, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for path in copy.rglob("summary.json"):
        summary = json.loads(path.read_text())
        batch = [0, 1, 2, 3] if summary["variant"] == "TD3" else [summary["seed"]]
        path.write_text(json.dumps({**summary, "seed_batch": batch, "phase_seconds": {"offline": 100.0}}))
    provenance = build_report([copy], tmp_path / "report", bootstrap_reps=100).markdown.read_text()
    provenance = provenance.split("## Provenance")[1]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in provenance.splitlines()
            if line.startswith("| ") and line.count("|") == 7}
    assert rows["TD3"] == "25" and rows["TD3+OPT"] == "100"


def write_stopped_run(root, name: str, config: Config, biases: tuple[float, float], mc_return: float,
                      offline_q: dict[int, float] | None = None) -> None:
    """A run directory as ``opt-fast train --until pretrain`` leaves it, with a given pre-training end record and,
    at each offline step of ``offline_q``, an offline evaluation whose Q_off is that value against a return of 50."""
    run = root / "hopper-medium-replay-v2" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config.to_json()))
    records = [{"phase": "offline", "offline_step": step, "score": 1.0, "q_off_q": q, "q_off_bias": q - 50.0,
                "mc_return": 50.0} for step, q in (offline_q or {}).items()]
    records += [{"phase": "offline", "score": 1.0, "q_off_bias": 99.0, "q_on_bias": 99.0, "mc_return": 1.0},
               {"phase": "pretrain", "loss": 1.0},  # a training record: the report reads evaluations only
               {"phase": "pretrain", "score": 2.0, "q_off_bias": biases[0], "q_on_bias": biases[1],
                "mc_return": mc_return}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary-pretrain.json").write_text(json.dumps(
        {"data_source": "generated", "seed": config.seed, "seed_batch": [config.seed], "phase_seconds": {},
         "final_score": None, "phase_scores": {}}))


def test_mechanism_table_reads_the_end_of_online_pretraining(tmp_path):
    """Runs stopped after online pre-training (no fine-tuning): the report is the mechanism table, one row per
    pre-training setting, the bias of Q_off and Q_on at that phase end over seeds."""
    base = resolve(Config(), {"env": "hopper-medium-replay", "budget": "study"}, "medium-replay", "hopper")
    for seed, (off, on) in enumerate([(10.0, -2.0), (14.0, -4.0)]):
        write_stopped_run(tmp_path, f"opt-{seed}", dataclasses.replace(base, seed=seed), (off, on), 100.0 + seed)
    write_stopped_run(tmp_path, "random-q-on", dataclasses.replace(base, n_pretrain=0), (12.0, -101.0), 100.0)
    report = build_report([tmp_path], tmp_path / "report")
    text = report.markdown.read_text()
    source = "[generated data, reduced budget (study)]"
    meta = next(line for line in text.splitlines() if line.startswith(f"| hopper-medium-replay | TD3+OPT {source}"))
    half = T_975[1] * np.std([10.0, 14.0], ddof=1) / math.sqrt(2)
    assert f"| 12.0 ± {half:.1f} (n=2) |" in meta and f"| -3.0 ± {half / 2:.1f} (n=2) |" in meta
    assert "| 100.5 ±" in meta
    random = next(line for line in text.splitlines() if line.startswith("| hopper") and "N_pretrain=0" in line)
    assert random.endswith("| 12.0 (n=1) | -101.0 (n=1) |")
    assert (tmp_path / "report" / "figures" / "mechanism-bias.png").stat().st_size > 0


def test_value_levels_follow_q_off_through_the_offline_phase(tmp_path):
    """Q_off as % of the Monte-Carlo return at each offline evaluation, by budget, over the seeds at the budget's
    protocol; an ablation (same offline phase) and a step only one seed evaluated are left out."""
    for budget in ("study", "quick"):
        base = resolve(Config(), {"env": "hopper-medium-replay", "budget": budget}, "medium-replay", "hopper")
        for seed, q in enumerate([(20.0, 40.0), (30.0, 46.0)]):
            write_stopped_run(tmp_path, f"opt-{budget}-{seed}", dataclasses.replace(base, seed=seed), (0.0, 0.0),
                              50.0, {1000: q[0], 2000: q[1], 3000 + seed: 50.0})
        write_stopped_run(tmp_path, f"ablation-{budget}", dataclasses.replace(base, meta_adaptation=False),
                          (0.0, 0.0), 50.0, {1000: 0.0, 2000: 0.0})
    levels = value_levels(find_runs([tmp_path]))
    study = ("hopper-medium-replay", "generated data, reduced budget (study)")
    assert set(levels) == {study, ("hopper-medium-replay", "generated data, reduced budget (quick)")}
    assert list(levels[study]) == [1000, 2000]
    assert levels[study][1000].mean == pytest.approx(50.0) and levels[study][1000].n == 2  # (40% + 60%) / 2
    assert levels[study][2000].mean == pytest.approx(86.0)  # (80% + 92%) / 2
    text = build_report([tmp_path], tmp_path / "report").markdown.read_text()
    assert f"| hopper-medium-replay | {study[1]} | step 1000: 50.0 ± " in text
    assert (tmp_path / "report" / "figures" / "value-level.png").stat().st_size > 0
