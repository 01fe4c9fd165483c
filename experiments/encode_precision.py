"""A trained model's codes on the full Fashion-MNIST protocol encoded in fp32 and under bf16 autocast on this CPU
(``ml.encode.encode_images`` uses bf16 where ``ml.device.bf16_autocast`` says the CPU has it natively): rate,
retrieval figures and the share of bits that differ.

    .venv/bin/python -m experiments.encode_precision /tmp/full_run_NAME.pt   # a full_run.py state dict, ~2 min

The state dict must be of the full profile's architecture (``small-conv-wide``, 64 bits).
"""

import sys
import time

import numpy as np
import torch

import ml.encode as encode
from bench.quality import load_protocol
from ml.metrics import evaluate_retrieval
from ml.models import build_model
from ml.recipes import build_run

torch.set_num_threads(2)
p = load_protocol("/usr/share/datasets/fashion-mnist", 28, 1)
spec, _ = build_run("full", 10, 1)
model = build_model(spec, load_pretrained=False)
model.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
codes = {}
for amp in (False, True):
    encode.bf16_autocast = lambda device, amp=amp: amp  # the module's own switch, forced either way
    t = time.perf_counter()
    q = encode.encode_images(model, p.query[0], torch.device("cpu"), 512)
    db = encode.encode_images(model, p.database[0], torch.device("cpu"), 512)
    seconds = time.perf_counter() - t
    m = evaluate_retrieval(q, p.query[1], db, p.database[1], 64, map_ks=(100, 1000), precision_ks=(1,))
    codes[amp] = (q, db)
    print(
        f"{'bf16' if amp else 'fp32'}: {(len(q) + len(db)) / seconds:.0f} img/s (flip views included), mAP@100 "
        f"{m.map_at['100']:.4f}, mAP@1000 {m.map_at['1000']:.4f}, P@1 {m.precision_at['1']:.4f}",
        flush=True,
    )
for i, name in enumerate(("queries", "database")):
    a, b = np.unpackbits(codes[False][i], axis=1), np.unpackbits(codes[True][i], axis=1)
    print(f"{name}: {(a != b).mean():.5f} of the bits differ, in {(a != b).any(1).mean():.4f} of the codes")
