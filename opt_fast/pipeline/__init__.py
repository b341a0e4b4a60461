"""The four phases of OPT (docs/method.md §2) over one run directory, or over several seeds' directories trained
together as a seed batch, resumable from any checkpoint; one room per concern:

- :mod:`~opt_fast.pipeline.trainer`: the phases and their steps (:class:`Trainer`);
- :mod:`~opt_fast.pipeline.records`: evaluation and training records, summaries, progress bars;
- :mod:`~opt_fast.pipeline.checkpoints`: checkpoints and the commit protocol, resuming;
- :mod:`~opt_fast.pipeline.cache`: the phase caches shared between runs;
- :mod:`~opt_fast.pipeline.state`: each seed's state and what the rooms share;
- :mod:`~opt_fast.pipeline.start`: :func:`open_run` and :func:`open_seed_batch`, fresh or resumed.
"""
from opt_fast.pipeline.start import open_run, open_seed_batch
from opt_fast.pipeline.trainer import Trainer

__all__ = ["Trainer", "open_run", "open_seed_batch"]
