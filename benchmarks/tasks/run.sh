#!/usr/bin/env bash
# Short CPU runs of every task: Transformer, TransEvolve-fullFF and TransEvolve-randomFF, one seed each, through
# `transevolve compare`, then a cross-task table (benchmarks/tasks/results.md and .json).
#
#   bash benchmarks/tasks/run.sh                 # every task below (about 1.5 hours on a quiet 2-core CPU)
#   bash benchmarks/tasks/run.sh text_rt lis     # some tasks; finished runs are kept (compare --resume)
#
# The budgets are deliberately small (a few hundred steps) so that the whole table fits in about 1.5 hours on
# 2 CPU cores (translation is the slowest: about 18 minutes per language for three models). They show that
# every task trains end to end on its real data and where each model stands early in training, not converged
# accuracies; the task presets in configs/<task>/ are the longer runs. The main job (`transevolve compare`,
# digits, 3 seeds) is not repeated here.
#
# The dynamic-programming tasks (arithmetic, lis, edit_distance) are graded by generated solutions, which every
# evaluation decodes (edit distance: about 30 s more per model). A task whose directory already exists under OUT is
# resumed, so finished runs are NOT re-evaluated: to re-measure some rows use a fresh OUT; summarise.py keeps the
# other tasks' rows of results.json. The three DP rows alone (about 14 minutes on a quiet 2-core CPU):
#
#   OUT=runs/tasks-generated bash benchmarks/tasks/run.sh arithmetic lis edit_distance
set -euo pipefail
cd "$(dirname "$0")/../.."
TRANSEVOLVE=${TRANSEVOLVE:-.venv/bin/transevolve}
OUT=${OUT:-runs/tasks}
# Shared budgets: 400 steps with two evaluations; 200 steps for the long-sequence tasks.
SHORT="train.max_steps=400 train.warmup_steps=40 train.eval_every=200"
LONG="train.max_steps=200 train.warmup_steps=20 train.eval_every=100 train.eval_batches=10"
declare -A OVERRIDES=(
  [max_digit]=""
  [reverse]=""
  [text_rt]="$SHORT"
  [text_food]="$LONG"
  [mnist5k]="$LONG train.batch_size=16"
  [fashion_mnist]="$LONG train.batch_size=16"
  [listops]="$SHORT task.options.min_length=50 task.options.max_length=200 model.width=64 model.time_dim=32"
  [arithmetic]="$SHORT train.eval_batches=10"
  [lis]="$SHORT train.eval_batches=10"
  [edit_distance]="$SHORT train.eval_batches=10"
  [translate_de]="$SHORT train.eval_batches=10 train.beam_size=1"
  [translate_es]="$SHORT train.eval_batches=10 train.beam_size=1"
)
ORDER=(max_digit reverse text_rt arithmetic lis edit_distance listops translate_de translate_es text_food mnist5k
       fashion_mnist)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=("${ORDER[@]}")
for task in "${tasks[@]}"; do
  if [ -z "${OVERRIDES[$task]+set}" ]; then
    echo "unknown task $task; choose from: ${ORDER[*]}" >&2
    exit 2
  fi
  resume=()
  [ -d "$OUT/$task" ] && resume=(--resume)
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$TRANSEVOLVE" compare --config "compare/$task.yaml" --seeds 1 --out "$OUT/$task" "${resume[@]}" -q \
    ${OVERRIDES[$task]}
  echo "$task: $(( $(date +%s) - start )) s" >&2
done
"${PYTHON:-.venv/bin/python}" benchmarks/tasks/summarise.py "$OUT" benchmarks/tasks/results
