#!/bin/bash
# The first honest results (issue 5, item 4): generated data, reduced budget ("cpu"), 5 seeds.
# Run from the repository root: bash results/cpu-budget/run.sh [RUNS_DIR]
# Every step is idempotent: a finished dataset or run is kept, an interrupted one resumes from its checkpoint,
# so the script can simply be run again after an interruption.
set -euo pipefail
runs=${1:-runs/cpu-budget}
here=results/cpu-budget
export OMP_NUM_THREADS=1 OPT_FAST_PROGRESS=0
workers=${WORKERS:-2}

# Data: D4RL's recipe (SAC behaviour policy), the quick generation budget, seed 0; Adroit from the DAPG release.
for family in hopper walker2d halfcheetah; do
  for kind in medium-replay medium random; do
    opt-fast data generate $family-$kind --budget quick
  done
done
for name in door-expert door-cloned; do
  opt-fast data generate $name --budget quick --adroit-data ../shared/data/adroit
done

# TD3 vs TD3+OPT on 9 MuJoCo datasets, 5 seeds (the offline phase is shared by both variants of a seed).
for family in hopper walker2d halfcheetah; do
  opt-fast ablate --env $family-random,$family-medium,$family-medium-replay --variants opt,baseline \
    --seeds 0-4 --budget cpu --workers $workers --out $runs/mujoco
done
# N_tau x N_pretrain on hopper-medium-replay, 5 seeds, in the same run root: the default cell (100, 500) and
# every offline phase are the runs above; shorter collections branch from the longest one.
opt-fast ablate --env hopper-medium-replay --n-tau 50,100,200 --n-pretrain 0,500 --seeds 0-4 --budget cpu \
  --workers $workers --out $runs/mujoco
# SPOT vs SPOT+OPT on Adroit door, 5 seeds.
opt-fast ablate --env door-expert,door-cloned --variants opt,baseline --seeds 0-4 --budget cpu \
  --workers $workers --out $runs/door

for part in mujoco door; do
  opt-fast report $runs/$part --out $here/$part
done
