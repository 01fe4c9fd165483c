#!/bin/bash
# GPU accuracy proxy for the product recipes: each line of LIST trains the bench's full-profile configuration with
# the product code (experiments/full_run.py -> bench.quality.train_and_encode) on CUDA, all at once.
# On the lent device: `bash experiments/gpu_recipe_sweep.sh experiments/gpu_sweep_1.txt [THREADS]`, with the
# IDX files in .devdata/ (carried). LIST lines: NAME SEED VALIDATION_SIZE CONFIG ('-' = the profile as is).
# Results: $OUT/sweep.jsonl (full_run.py's JSON lines), per-epoch logs: $OUT/procs.log.
export DEVICE=cuda FMNIST=${FMNIST:-.devdata} RUNS_LOG=$OUT/sweep.jsonl OMP_NUM_THREADS=${2:-1} PYTHONUNBUFFERED=1
# the device image has no duckdb, which bench.quality imports but this never opens: a stand-in module
python3 -c "import duckdb" 2>/dev/null || { mkdir -p /tmp/stub && export PYTHONPATH=/tmp/stub &&
  printf 'def __getattr__(name):\n    return type(name, (), {"__getattr__": lambda self, n: None})()\n' > /tmp/stub/duckdb.py; }
nvidia-smi --query-gpu=name --format=csv,noheader
while read -r name seed vsize config; do
  [ -z "$name" ] && continue
  [ "$config" = "-" ] && config=""
  (SEED=$seed VALIDATION_SIZE=$vsize python3 -m experiments.full_run "$name" full "$config" 0 2>&1 | sed -u "s/^/[$name] /") >> $OUT/procs.log &
done < "$1"
wait
