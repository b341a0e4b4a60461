#!/bin/bash
# The study of issue 10 (README.md beside this file): generated data, then the mechanism, fine-tuning and door-cloned.
# Run from the repository root:   bash results/study/run.sh [STEP...]
#   steps: mechanism finetune door datacard report (default: all of them, in that order); `tau` (the value-scale
#   question, with BUDGET=quick); `lane` runs job lines from stdin
#   BUDGET=study (default) or quick: the training budget of the mechanism and fine-tuning runs. The data is always
#   the `study` generation (1M rows, SAC up to the medium target), passed with --dataset, so every budget trains on
#   the same files.
# Every job is idempotent and resumable: a finished dataset or run is kept, an interrupted one resumes from its
# checkpoint, so the script can simply be run again after an interruption. Two lanes of one single-threaded process
# each (two 1-thread processes do ~1.3x the work of one 2-thread process on a 2-core machine); each job names its seed
# batch. A job makes its dataset first when it is missing; a lock keeps the two lanes from making one dataset twice.
# Each finished run's small files (config, metrics, summaries) are copied under results/study/runs/ as it completes.
set -euo pipefail
# Run directories (checkpoints, replay buffers, the offline cache) live beside the data cache, outside the checkout:
# a session that gets the same machine gets a new checkout but keeps the home directory, so long runs resume there.
runs=${RUNS:-$HOME/.opt_fast/runs/study}
budget=${BUDGET:-study}
here=results/study
data_dir=${OPT_FAST_DATA_DIR:-$HOME/.opt_fast/datasets}/generated-v5-study
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPT_FAST_PROGRESS=0
mkdir -p $here/logs "$data_dir"

file_of() {  # D4RL's file name of a dataset: hopper-medium-replay -> hopper_medium_replay-v2.hdf5
  echo "$data_dir/${1//-/_}-v2.hdf5"
}

data() {  # D4RL's recipe (SAC behaviour policy, or a uniform random policy), the study generation budget
  flock "$data_dir/.$1.lock" opt-fast data generate "$1" --budget study
}

keep() {  # copy the small outputs of the runs of one dataset into the repository: those whose last phase written
  # is finished (a summary newer than the metrics); a run that is training now, in the other lane, is not copied
  # (its metrics would overwrite the kept ones of the phases it finished before)
  local dataset=$1 summary
  for dir in "$runs/$dataset"-v2/*/; do
    [ -f "$dir/config.json" ] || continue
    summary=$(ls -t "$dir"/summary*.json 2>/dev/null | head -n 1 || true)
    [ -n "$summary" ] && [ ! "$dir/metrics.jsonl" -nt "$summary" ] || continue
    local dest=$here/runs/$dataset/$(basename "$dir")
    mkdir -p "$dest"
    cp "$dir"/config.json "$dir"/metrics.jsonl "$dest"/
    cp "$dir"/summary*.json "$dest"/ 2>/dev/null || true
  done
}

restore() {  # bring back the kept outputs of runs of one dataset (a new machine has none of $runs): a run that
  # finished its phases is then not trained again (`--resume` keeps it), an unfinished one starts from the beginning
  local dataset=$1
  for dir in "$here/runs/$dataset"/*/; do
    [ -d "$dir" ] || continue
    local dest=$runs/$dataset-v2/$(basename "$dir")
    [ -e "$dest/config.json" ] || { mkdir -p "$dest"; cp "$dir"/* "$dest"/; }
  done
}

train() {  # train SEEDS DATASET [OPTIONS...]: one seed batch on the study data, then keep its outputs
  local seeds=$1 dataset=$2; shift 2
  data "$dataset"
  restore "$dataset"
  opt-fast train --env "$dataset" --dataset "$(file_of "$dataset")" --budget "$budget" --seeds "$seeds" --resume \
    --out "$runs" "$@"
  keep "$dataset"
}

mechanism() {  # the phases up to the end of online pre-training; extra options make an ablation of Q_on's pre-training
  local seeds=$1 dataset=$2; shift 2
  train "$seeds" "$dataset" --until pretrain "$@"
}

finetune() {  # TD3 and TD3+OPT to the end of the budget (TD3+OPT continues its mechanism run)
  local seeds=$1 dataset=$2; shift 2
  train "$seeds" "$dataset" --compare "$@"
}

door() {  # Adroit door-cloned at the paper's own protocol (study = paper for SPOT families), SPOT vs SPOT+OPT
  flock "$data_dir/.door-cloned.lock" \
    opt-fast data generate door-cloned --budget study --adroit-data ../shared/data/adroit
  opt-fast train --env door-cloned --budget study --seeds "$1" --compare --resume --out "$runs" \
    --adroit-data ../shared/data/adroit
  keep door-cloned
}

datacard() {  # data.md (or $DATACARD): every generated dataset of the study on this machine beside D4RL's statistics
  # (the generated files differ between the Intel and the AMD machines tried: one card per CPU vendor)
  local names=() name machine card=${DATACARD:-$here/data.md}
  # Assigned on its own so that a failure stops the script (set -e) instead of writing an empty machine name.
  machine=$(python -c 'from opt_fast.provenance import machine_description; print(machine_description())')
  for name in hopper-medium-replay walker2d-medium-replay halfcheetah-medium-replay hopper-random walker2d-random \
              halfcheetah-random hopper-medium walker2d-medium halfcheetah-medium; do
    if [ -f "$(file_of "$name")" ]; then names+=("$name"); fi
  done
  {
    echo "# Generated data of the study beside D4RL's published statistics"
    echo
    echo "Generated data, not D4RL data: \`opt-fast data generate NAME --budget study\` (D4RL's recipe, seed 0," \
         "gymnasium v5). Written by \`${DATACARD:+DATACARD=$card }bash results/study/run.sh datacard\` on $(date -u +%F), machine:" \
         "$machine, with" \
         "\`opt-fast data compare ${names[*]} --budget study\`. D4RL's rows and returns: Decision Transformer's" \
         "run of its data script on the v2 files; episodes: the TFDS catalog (\`opt_fast/data/published.py\`)."
    echo
    opt-fast data compare "${names[@]}" --budget study
  } > "$card.tmp"
  mv "$card.tmp" "$card"
}

run_jobs() {  # run_jobs LOG: each job read from stdin in turn, output appended to LOG
  local job
  while read -r job; do
    echo "[$(date -u +%H:%M)] $job" | tee -a "$1"
    eval "$job" >> "$1" 2>&1
  done
}

# The jobs of each step, two lanes (lane 0 on even lines, lane 1 on odd ones), cheapest evidence first.
jobs_for() {
  case $1 in
    # The mechanism on walker2d-random (where the paper's gain is largest) and the medium-replay datasets; on
    # walker2d-random and hopper-medium-replay also Q_on without meta-adaptation, on offline data only, on online
    # data only, and a random Q_on (no pre-training). Ablations use the seed batches of the main runs, so they start
    # from the main runs' cached offline phase and collection.
    mechanism)
      local ablations=("--n-pretrain 0" "--meta-adaptation false" "--pretrain-data offline" "--pretrain-data online")
      local lines=("mechanism 0-2 walker2d-random" "mechanism 0-2 hopper-medium-replay")
      local seeds ablation dataset
      for ablation in "${ablations[@]}"; do lines+=("mechanism 0-2 walker2d-random $ablation"); done
      lines+=("mechanism 3-4 walker2d-random" "mechanism 3-4 hopper-medium-replay")
      for seeds in 0-2 3-4; do
        for ablation in "${ablations[@]}"; do lines+=("mechanism $seeds hopper-medium-replay $ablation"); done
      done
      for ablation in "${ablations[@]}"; do lines+=("mechanism 3-4 walker2d-random $ablation"); done
      for seeds in 0-2 3-4; do
        for dataset in walker2d-medium-replay halfcheetah-medium-replay; do lines+=("mechanism $seeds $dataset"); done
      done
      printf '%s\n' "${lines[@]}" ;;
    finetune) printf '%s\n' \
      "finetune 0-2 walker2d-random" "finetune 0-2 hopper-medium-replay" \
      "finetune 3-4 walker2d-random" "finetune 3-4 hopper-medium-replay" \
      "finetune 0-2 walker2d-medium-replay" "finetune 0-2 hopper-random" \
      "finetune 3-4 walker2d-medium-replay" "finetune 3-4 hopper-random" ;;
    door) printf '%s\n' "door 0" "door 1" "door 2" ;;
    # The value-scale question at a reduced budget (BUDGET=quick): the mechanism and fine-tuning with the offline and
    # pre-training phases' Polyak rate scaled so that updates x tau is the paper's (--tau-scaling budget), to set
    # beside the same seeds unscaled. TD3+OPT's mechanism, TD3 beside it, then TD3+OPT continued to the end, and
    # Q_on without meta-adaptation and on offline data only, as the unscaled ablations; then hopper-medium-replay's
    # mechanism (where the scaled offline rate makes TD3+BC's critic diverge: README).
    tau) printf '%s\n' "mechanism 0-2 walker2d-random --tau-scaling budget" \
      "train 0-2 walker2d-random --tau-scaling budget --no-opt" "train 0-2 walker2d-random --tau-scaling budget" \
      "mechanism 0-2 walker2d-random --tau-scaling budget --meta-adaptation false" \
      "mechanism 0-2 walker2d-random --tau-scaling budget --pretrain-data offline" \
      "mechanism 0-2 hopper-medium-replay --tau-scaling budget" ;;
  esac
}

steps=${*:-mechanism finetune door datacard report}
for step in $steps; do
  case $step in
    datacard) datacard ;;
    report) opt-fast report $here/runs --out $here/report 2>&1 | tee -a $here/logs/report.log ;;
    # One more lane running the job lines given on stdin (e.g. `echo "mechanism 0-2 walker2d-random" | ... lane`).
    lane) run_jobs "$here/logs/lane-$budget-$(date -u +%H%M%S)-$$.log" ;;
    *)
      jobs_for "$step" | awk 'NR % 2 == 1' | run_jobs "$here/logs/$step-$budget-lane0.log" &
      jobs_for "$step" | awk 'NR % 2 == 0' | run_jobs "$here/logs/$step-$budget-lane1.log" &
      wait ;;
  esac
done
