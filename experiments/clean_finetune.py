"""Probe behind the ``clean_epochs`` recipe field: fine-tune a trained full-profile model for a few epochs on the
training images as stored (or, as a control, with the shift + flip augmentation), CSQ loss only, AdamW with a
cosine decay from LR; print mAP@100, P@1 and the codes read as a classifier (``retrieval_decomposition.py``).

    .venv/bin/python -m experiments.full_run s3264e24 full 'epochs=24,clean_epochs=0' 30
    .venv/bin/python -m experiments.clean_finetune /tmp/full_run_s3264e24.pt 3 1e-3 clean
    .venv/bin/python -m experiments.clean_finetune /tmp/full_run_s3264e24.pt 3 1e-3 augmented

Seeded (torch seed 0); ~1 min per epoch on 2 cores plus ~1 min of encoding and evaluation.
"""

import json
import math
import sys

import torch

from bench.quality import load_protocol
from experiments.retrieval_decomposition import code_accuracy, code_classes
from ml.data import augment, iterate_batches, normalise
from ml.device import bf16_autocast
from ml.encode import encode_images
from ml.losses import build_loss
from ml.metrics import evaluate_retrieval
from ml.models import build_model
from ml.recipes import build_run

torch.set_num_threads(2)
torch.manual_seed(0)
weights, epochs, lr, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
device = torch.device("cpu")
p = load_protocol("/usr/share/datasets/fashion-mnist", 28, 1)
spec, _ = build_run("full", 10, 1)
model = build_model(spec)
model.load_state_dict(torch.load(weights, weights_only=True))
loss_fn = build_loss("csq", 10, spec.bits, num_train=len(p.train[0]), seed=0)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
images, labels = torch.from_numpy(p.train[0]), torch.from_numpy(p.train[1]).float()
gen = torch.Generator().manual_seed(1)
steps, step = epochs * math.ceil(len(images) / 128), 0
for epoch in range(epochs):
    model.train()
    for idx in iterate_batches(len(images), 128, gen):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = normalise(images[idx])
        x = augment(x, gen) if mode == "augmented" else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast(device)):
            loss = loss_fn(model(x).float(), labels[idx], idx)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    print(f"epoch {epoch + 1}/{epochs}: last loss {loss.item():.4f}", flush=True)
model.eval()
q, db = encode_images(model, p.query[0], device), encode_images(model, p.database[0], device)
m = evaluate_retrieval(q, p.query[1], db, p.database[1], spec.bits, map_ks=(100,), precision_ks=(1,))
print(
    json.dumps(
        dict(
            epochs=epochs,
            lr=lr,
            mode=mode,
            map100=round(m.map_at["100"], 4),
            p1=m.precision_at["1"],
            **code_accuracy(code_classes(q, db, p, spec.bits)),
        )
    )
)
