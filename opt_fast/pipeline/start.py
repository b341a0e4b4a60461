"""Opening a run: a fresh trainer for new run directories (refusing to overwrite another run), or one resumed from
their checkpoints, starting from the phase caches that match."""
from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from pathlib import Path


from opt_fast.config import Config, config_differences
from opt_fast.data.d4rl import OfflineDataset
from opt_fast.io import read_json, write_json
from opt_fast.pipeline.trainer import Trainer


def open_run(config: Config, run_dir: Path, dataset: OfflineDataset, resume: bool,
             cache_dir: Path | None = None, collect_snapshots: Collection[int] = (),
             pretrain_snapshots: Collection[int] = (), sinks: Sequence[str] = ()) -> Trainer:
    """A trainer for one run of its own in ``run_dir``; see :func:`open_seed_batch`."""
    return open_seed_batch([config], [run_dir], dataset, resume, cache_dir, collect_snapshots, pretrain_snapshots,
                           sinks)


def open_seed_batch(configs: Sequence[Config], run_dirs: Sequence[Path], dataset: OfflineDataset, resume: bool,
                    cache_dir: Path | None = None, collect_snapshots: Collection[int] = (),
                    pretrain_snapshots: Collection[int] = (), sinks: Sequence[str] = ()) -> Trainer:
    """A trainer for the seeds ``configs`` (each with its directory in ``run_dirs``): fresh (refusing to overwrite
    another run) or resumed from their last checkpoints.

    With a ``cache_dir``, the seeds start from the cached offline phase, the stored collection prefix and the stored
    pre-training prefix that match their configurations, if every seed has one; ``collect_snapshots`` are the env
    steps at which their own collection stores its state, ``pretrain_snapshots`` the pre-training steps at which
    their own pre-training does. ``sinks`` (:data:`opt_fast.metrics.SINKS`) mirror the metrics records.
    """
    run_dirs = [Path(d) for d in run_dirs]
    started = []
    for config, run_dir in zip(configs, run_dirs):
        config_path = run_dir / "config.json"
        if config_path.exists():
            stored = Config.from_json(read_json(config_path))
            if not resume:
                raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                                      "another --out")
            if stored.to_json() != config.to_json():
                raise ValueError(f"--resume: {config_path} differs from the requested configuration in "
                                 + "; ".join(config_differences(stored.to_json(), config.to_json())))
        started.append((run_dir / "checkpoints" / "latest.pt").exists())
        if resume and config_path.exists() and not started[-1]:
            print(f"--resume: {run_dir} has no checkpoint yet; starting it from the beginning", file=sys.stderr)
    trainer = Trainer(configs, run_dirs, dataset, cache_dir, collect_snapshots, pretrain_snapshots, sinks)
    if resume and any(started):
        if not all(started):
            raise ValueError(f"--resume: only {[str(d) for d, s in zip(run_dirs, started) if s]} of the seed batch "
                             "have checkpoints; a seed batch resumes only from checkpoints it wrote together")
        trainer.resume()
    else:
        for config, run_dir in zip(configs, run_dirs):
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(err.errno, f"cannot create the run directory {run_dir}: {err.strerror}") from None
            write_json(run_dir / "config.json", config.to_json())
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        trainer.try_offline_cache()
    trainer.try_collect_cache()
    trainer.try_pretrain_cache()
    return trainer
