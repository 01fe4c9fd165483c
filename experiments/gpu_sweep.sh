#!/bin/bash
# GPU accuracy sweep of the prototype recipes (recipe_sweep.py; fp32, TF32 off), all at once. On the lent device:
# `bash experiments/gpu_sweep.sh`; results: $OUT/sweep.jsonl, logs: $OUT/procs.log. Each CFG line: NAME key=val ...
export DEVICE=cuda FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist/} LOG=$OUT/sweep.jsonl PYTHONPATH=$PWD THREADS=1 PYTHONUNBUFFERED=1
A="width=96 depth=3 heads=3 stem=16,32,96"
B="width=64 depth=4 heads=2 stem=16,32,64"
C="width=128 depth=4 heads=4 stem=32,64,128"
while read -r name rest; do
  [ -z "$name" ] && continue
  eval "python3 -m experiments.recipe_sweep $name $rest" >> $OUT/procs.log 2>&1 &
done <<CFG
A6csq $A epochs=6
A6ce $A epochs=6 ce=1
A6ce_er $A epochs=6 ce=1 erase=0.25
A6ce_mean $A epochs=6 ce=1 pool=mean
B9ce $B epochs=9 ce=1
B9ce_lr3 $B epochs=9 ce=1 lr=3e-3
A24ce_er $A epochs=24 ce=1 erase=0.25
A24ce_er_ema $A epochs=24 ce=1 erase=0.25 ema=0.999
B35ce_er $B epochs=35 ce=1 erase=0.25
C12ce_er $C epochs=12 ce=1 erase=0.25
CFG
wait
