#!/bin/bash
# The study of issue 10 (README.md beside this file): generated data, the `study` budget, 5 seeds per setting.
# Run from the repository root:   bash results/study/run.sh [STEP...]
#   steps: data mechanism finetune door report (default: all of them, in that order)
# Every step is idempotent and resumable: a finished dataset or run is kept, an interrupted one resumes from its
# checkpoint, so the script can simply be run again after an interruption. Two lanes of one single-threaded process
# each: two 1-thread processes do ~1.3x the work of one 2-thread process on a 2-core machine. Training lanes are seed
# groups trained as seed batches (SEED_GROUPS, default "0-2 3-4": seeds 0-4), data generation splits its datasets.
# Each finished run's small files (config, metrics, summaries) are copied under results/study/runs/ as it completes.
set -euo pipefail
runs=${RUNS:-runs/study}
here=results/study
read -r -a groups <<< "${SEED_GROUPS:-0-2 3-4}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPT_FAST_PROGRESS=0
mkdir -p $here/logs

keep() {  # copy the small outputs of the runs of one dataset into the repository
  local dataset=$1
  for dir in "$runs/$dataset"-v2/*/; do
    [ -f "$dir/config.json" ] || continue
    local dest=$here/runs/$dataset/$(basename "$dir")
    mkdir -p "$dest"
    cp "$dir"/config.json "$dir"/metrics.jsonl "$dest"/
    cp "$dir"/summary*.json "$dest"/ 2>/dev/null || true
  done
}

data() {  # D4RL's recipe (SAC behaviour policy), the study generation budget (1M rows, SAC up to the medium target)
  opt-fast data generate "$1" --budget study
}

mechanism() {  # the phases up to the end of online pre-training; extra options make an ablation of Q_on's pre-training
  local dataset=$1; shift
  opt-fast train --env "$dataset" --budget study --seeds "$seeds" --until pretrain --resume --out "$runs" "$@"
  keep "$dataset"
}

finetune() {  # TD3 and TD3+OPT to the end of the study budget (TD3+OPT continues its mechanism run)
  local dataset=$1
  opt-fast train --env "$dataset" --budget study --seeds "$seeds" --compare --resume --out "$runs"
  keep "$dataset"
}

run_jobs() {  # run_jobs LOG: each job read from stdin in turn, output appended to LOG
  local job
  while read -r job; do
    echo "[$(date -u +%H:%M)] $job" | tee -a "$1"
    eval "$job" >> "$1" 2>&1
  done
}

jobs_for() {
  case $1 in
    data) printf '%s\n' "data hopper-medium-replay" "data walker2d-medium-replay" "data halfcheetah-medium-replay" \
            "data walker2d-random" "data hopper-medium" "data hopper-random" "data halfcheetah-random" \
            "data walker2d-medium" "data halfcheetah-medium" ;;
    # The mechanism on the 3 medium-replay datasets; on hopper-medium-replay also Q_on without meta-adaptation, on
    # offline data only, on online data only, and a random Q_on (no pre-training).
    mechanism) printf '%s\n' "mechanism hopper-medium-replay" "mechanism walker2d-medium-replay" \
                 "mechanism hopper-medium-replay --meta-adaptation false" \
                 "mechanism halfcheetah-medium-replay" \
                 "mechanism hopper-medium-replay --pretrain-data offline" \
                 "mechanism hopper-medium-replay --pretrain-data online" \
                 "mechanism hopper-medium-replay --n-pretrain 0" ;;
    finetune) printf '%s\n' "finetune hopper-medium-replay" "finetune walker2d-random" \
                "finetune walker2d-medium-replay" "finetune halfcheetah-medium-replay" "finetune hopper-random" \
                "finetune halfcheetah-random" ;;
    # Adroit door-cloned at the paper's own protocol (study = paper for SPOT families), SPOT vs SPOT+OPT.
    door) printf '%s\n' "opt-fast data generate door-cloned --budget study --adroit-data ../shared/data/adroit" \
            "opt-fast train --env door-cloned --budget study --seeds \"\$seeds\" --compare --resume --out $runs --adroit-data ../shared/data/adroit && keep door-cloned" ;;
    report) printf '%s\n' "opt-fast report $here/runs --out $here/report" ;;
  esac
}

steps=${*:-data mechanism finetune door report}
for step in $steps; do
  case $step in
    data)  # two generators at a time, each dataset once
      jobs_for data | awk 'NR % 2 == 1' | run_jobs $here/logs/data-0.log &
      jobs_for data | awk 'NR % 2 == 0' | run_jobs $here/logs/data-1.log &
      wait ;;
    report) jobs_for report | run_jobs $here/logs/report.log ;;
    *)  # one lane per seed group
      for seeds in "${groups[@]}"; do jobs_for "$step" | seeds=$seeds run_jobs "$here/logs/$step-seeds$seeds.log" & done
      wait ;;
  esac
done
