"""One training run on the full Fashion-MNIST protocol, as ``vitrieve bench quality`` trains it, plus where its
mAP@100 goes: the accuracy of the codes as a classifier (nearest CSQ centre) on the queries and on the database.

    .venv/bin/python docs/experiments/full_run.py NAME PROFILE 'CONFIG' BUDGET_MINUTES
    .venv/bin/python docs/experiments/full_run.py s3264 full 'epochs=16,overrides={"stem_channels":[32,64]}' 30

CONFIG is a ``--config`` string of the bench; BUDGET_MINUTES 0 = no budget. Prints each epoch and one JSON line
(also appended to tmp/full_runs.jsonl); the model's state dict and codes go to /tmp/full_run_NAME.{pt,npz}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, ".")
from ml.encode import encode_images
from ml.losses.centres import hash_centres, nearest_centre
from ml.metrics import evaluate_retrieval
from ml.recipes import build_run
from ml.train import TrainData, train_hashing_model
from pipelines.quality_bench import load_protocol, parse_config

torch.set_num_threads(2)
name, profile, given, budget = sys.argv[1], sys.argv[2], parse_config(sys.argv[3]), float(sys.argv[4])
p = load_protocol("/usr/share/datasets/fashion-mnist", 28, 1)
overrides = given.pop("overrides", None)
spec, cfg = build_run(profile, 10, 1, overrides=overrides, **given)
cfg.time_budget_s = budget * 60
print(spec, cfg, flush=True)
t0 = time.time()
data = TrainData(*p.train, *p.val_query, *p.val_db)
res = train_hashing_model(spec, cfg, data, torch.device("cpu"), log=lambda s: print(s, flush=True))
train_min = (time.time() - t0) / 60
torch.save(res.model.state_dict(), f"/tmp/full_run_{name}.pt")
q, db = (encode_images(res.model, part[0], torch.device("cpu")) for part in (p.query, p.database))
np.savez(f"/tmp/full_run_{name}.npz", q=q, db=db)
m = evaluate_retrieval(q, p.query[1], db, p.database[1], spec.bits, map_ks=(100, 1000), precision_ks=(1, 100))
centres = hash_centres(10, spec.bits)


def accuracy(codes: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(nearest_centre(codes, centres) == labels.argmax(1)))


out = dict(name=name, profile=profile, config=sys.argv[3], train_min=round(train_min, 1), best_val=res.best_val_map,
           best_epoch=res.best_epoch, img_s=round(res.train_images_per_s), map100=m.map_at["100"],
           map1000=m.map_at["1000"], p1=m.precision_at["1"], query_accuracy=accuracy(q, p.query[1]),
           database_purity=accuracy(db, p.database[1]), val_curve=[round(h["val_map"], 4) for h in res.history])  # fmt: skip
print(json.dumps(out), flush=True)
with Path("tmp/full_runs.jsonl").open("a") as f:
    f.write(json.dumps(out) + "\n")
