"""mAP@100 / P@1 of a stored model with and without flip test-time averaging (codes = sign(u(x) + u(mirror x))).

    .venv/bin/python docs/experiments/flip_tta_eval.py <root>/models/<model_id>

Full Fashion-MNIST protocol (10,000 queries x 60,000 database) from /usr/share/datasets/fashion-mnist.
"""

import json
import sys

import torch

sys.path.insert(0, ".")
from ml.checkpoint import model_from_checkpoint
from ml.encode import encode_images
from ml.metrics import evaluate_retrieval
from pipelines.quality_bench import load_protocol

folder = sys.argv[1]
card = json.load(open(f"{folder}/model.json"))
model = model_from_checkpoint(card, open(f"{folder}/model.safetensors", "rb").read()).eval()
protocol = load_protocol("/usr/share/datasets/fashion-mnist", model.spec.img_size, model.spec.in_chans)
for flip in (False, True):
    model.spec.flip_tta = flip
    q, db = (encode_images(model, part[0], torch.device("cpu")) for part in (protocol.query, protocol.database))
    m = evaluate_retrieval(q, protocol.query[1], db, protocol.database[1], model.spec.bits, map_ks=(100,), precision_ks=(1,))
    print(f"flip_tta={flip}: mAP@100 {m.map_at['100']:.4f}, P@1 {m.precision_at['1']:.4f}", flush=True)
