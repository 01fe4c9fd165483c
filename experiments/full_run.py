"""One training run on the full Fashion-MNIST protocol, as ``vitrieve bench quality`` trains it
(``bench.quality.train_and_encode``), plus where its mAP@100 goes: the accuracy of the codes as a
classifier (nearest CSQ centre) on the queries and on the database (``retrieval_decomposition.py``).

    .venv/bin/python -m experiments.full_run NAME PROFILE 'CONFIG' BUDGET_MINUTES
    .venv/bin/python -m experiments.full_run s3264 full 'epochs=16,overrides={"stem_channels":[32,64]}' 30

CONFIG is a ``--config`` string of the bench; BUDGET_MINUTES 0 = no budget. Prints each epoch and one JSON line
(also appended to $RUNS_LOG, default tmp/full_runs.jsonl); the model's state dict and codes go to
/tmp/full_run_NAME.{pt,npz}. Environment: DEVICE (default cpu; cuda for the GPU proxy, gpu_recipe_sweep.sh), SEED
(training seed, default 0), FMNIST (the IDX folder), VALIDATION_SIZE (held-out training images, default 5000).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from bench.quality import load_protocol, parse_config, train_and_encode
from experiments.retrieval_decomposition import code_accuracy, code_classes
from ml.metrics import evaluate_retrieval

name, profile, config, budget = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
env = os.environ.get
device, seed = torch.device(env("DEVICE", "cpu")), int(env("SEED", "0"))
if device.type == "cpu":
    torch.set_num_threads(2)
validation_size = int(env("VALIDATION_SIZE", "5000"))
p = load_protocol(env("FMNIST", "/usr/share/datasets/fashion-mnist"), 28, 1, validation_size=validation_size)
run = train_and_encode(
    profile,
    parse_config(config),
    p,
    device,
    seed=seed,
    budget_s=budget * 60,
    log=lambda s: print(s, flush=True),
)
torch.save(run.result.model.state_dict(), f"/tmp/full_run_{name}.pt")
np.savez(f"/tmp/full_run_{name}.npz", q=run.q_codes, db=run.db_codes)
bits = run.spec.bits
m = evaluate_retrieval(
    run.q_codes, p.query[1], run.db_codes, p.database[1], bits, map_ks=(100, 1000), precision_ks=(1, 100)
)
out = dict(
    name=name,
    profile=profile,
    config=config,
    device=str(device),
    seed=seed,
    validation_size=validation_size,
    train_min=round(run.train_s / 60, 1),
    best_val=run.result.best_val_map,
    best_epoch=run.result.best_epoch,
    img_s=round(run.result.train_images_per_s),
    map100=m.map_at["100"],
    map1000=m.map_at["1000"],
    p1=m.precision_at["1"],
    **code_accuracy(code_classes(run.q_codes, run.db_codes, p, bits)),
    val_curve=[round(h["val_map"], 4) for h in run.result.history],
)
print(json.dumps(out), flush=True)
with Path(env("RUNS_LOG", "tmp/full_runs.jsonl")).open("a") as f:
    f.write(json.dumps(out) + "\n")
