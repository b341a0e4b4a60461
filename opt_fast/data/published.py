"""D4RL's published statistics of its MuJoCo v2 datasets, and a table that puts a generated dataset beside them.

Sources (carried over as numbers, nothing else):
- rows and returns: the output of Decision Transformer's data script (kzl/decision-transformer,
  ``gym/data/download_d4rl_datasets.py``) on the official ``gym_mujoco_v2`` files, which counts the steps of
  finished trajectories (cut at terminals or timeouts) and their returns; it does not cover ``random``;
- episodes: the TensorFlow Datasets catalog (``d4rl_mujoco_{hopper,walker2d,halfcheetah}``, configs ``v2-*``);
- random's 1M rows: D4RL's recipe (D4RL: "random: 1M steps of a random policy").
Where no source gives a number it is None ("n/f" in tables). Episode counts depend on where a loader cuts episodes
(TFDS keeps a trailing unfinished piece), and medium-replay's timeouts mark the ends of SAC's sampling blocks, so
its "episodes" include short pieces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PublishedStats:
    rows: int | None
    episodes: int | None
    return_mean: float | None
    return_min: float | None
    return_max: float | None


D4RL_STATS: dict[str, PublishedStats] = {
    "hopper-random-v2": PublishedStats(1_000_000, 45_240, None, None, None),
    "hopper-medium-v2": PublishedStats(999_906, 2_187, 1422.06, 315.87, 3222.36),
    "hopper-medium-replay-v2": PublishedStats(402_000, 2_041, 467.30, -1.44, 3192.93),
    "walker2d-random-v2": PublishedStats(1_000_000, 48_908, None, None, None),
    "walker2d-medium-v2": PublishedStats(999_995, 1_191, 2852.09, -6.61, 4226.94),
    "walker2d-medium-replay-v2": PublishedStats(302_000, 1_093, 682.70, -50.20, 4132.00),
    "halfcheetah-random-v2": PublishedStats(1_000_000, 1_000, None, None, None),
    "halfcheetah-medium-v2": PublishedStats(1_000_000, 1_000, 4770.33, -310.23, 5309.38),
    "halfcheetah-medium-replay-v2": PublishedStats(202_000, 202, 3093.29, -638.49, 4985.14),
}


def _cell(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "n/f"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def comparison_table(infos: list[dict[str, Any]]) -> str:
    """A Markdown table of each dataset (``opt_fast.data.d4rl.dataset_info`` of it) beside D4RL's published
    statistics of the same name, with the generation's provenance (SAC steps to the medium target, whether it was
    reached)."""
    lines = ["| dataset | | rows | episodes | return mean | return min | return max | medium policy |",
             "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        name = info["dataset"] or info["path"]
        returns, meta = info["episode_return"] or {}, info["metadata"]
        policy = "—"
        if "medium_policy_step" in meta:
            reached = "reached" if str(meta.get("medium_target_reached")) in ("True", "1", "true") else "NOT reached"
            policy = (f"SAC step {int(meta['medium_policy_step']):,}, return {float(meta['medium_policy_return']):.0f} "
                      f"(target {float(meta['medium_target']):.0f}: {reached})")
        lines.append(f"| {name} | ours ({info['source']}) | {info['rows']:,} | {info['episodes']:,} | "
                     f"{_cell(returns.get('mean'))} | {_cell(returns.get('min'))} | {_cell(returns.get('max'))} | "
                     f"{policy} |")
        published = D4RL_STATS.get(info["dataset"] or "")
        if published is not None:
            lines.append(f"| | D4RL | {_cell(published.rows)} | {_cell(published.episodes)} | "
                         f"{_cell(published.return_mean)} | {_cell(published.return_min)} | "
                         f"{_cell(published.return_max)} | |")
    return "\n".join(lines)
