"""Where one OPT fine-tuning update's CPU time goes: torch.profiler's operators by self CPU time.

    python benchmarks/profile_update.py [--seeds 1] [--threads 1] [--updates 40]

One update is what ``Trainer._finetune_update`` runs (density ratio, priorities, Q_off and Q_on TD steps, every
second update the kappa-mixed actor step and the Polyak updates) on random Hopper-sized batches of 256.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from opt_fast.agents.common import Batch
from opt_fast.agents.opt import OPTAgent
from opt_fast.config import Config

OBS_DIM, ACT_DIM, BATCH = 11, 3, 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    s = args.seeds

    def batch() -> Batch:
        return Batch(torch.randn(s, BATCH, OBS_DIM, generator=gen), torch.rand(s, BATCH, ACT_DIM, generator=gen) * 2 - 1,
                     torch.randn(s, BATCH, generator=gen), torch.randn(s, BATCH, OBS_DIM, generator=gen),
                     torch.zeros(s, BATCH))

    agent = OPTAgent(OBS_DIM, ACT_DIM, Config(env="hopper-random"), seeds=list(range(s)))
    agent.start_finetuning()
    batches = [batch() for _ in range(6)]

    def update(step: int) -> None:
        agent.finetune_update(batches[step % 6], batches[(step + 1) % 6], batches[(step + 2) % 6], kappa=[0.3] * s,
                              online_progress=[0.0] * s, step=step)

    for step in range(10):  # warm-up: Adam's state, the allocator's pools
        update(step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(10, 10 + args.updates):
            update(step)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40))


if __name__ == "__main__":
    main()
