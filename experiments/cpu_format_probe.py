"""Training rate of the profiles' model (``vts`` small-conv, 512-wide head; ``{"stem_channels": [32, 64]}`` is the
full profile's stem) on this CPU by memory format and
precision: contiguous (NCHW) vs channels-last weights, fp32 vs bf16 autocast (``bench.models.Runner``'s
training step). Interleaved rounds of 6 steps, best of 4.

    .venv/bin/python -m experiments.cpu_format_probe ['{"stem_channels": [32, 64]}' ...]
"""

import json
import sys
import time

import torch

from bench.models import Runner
from ml.models import ModelSpec

torch.set_num_threads(2)
variants = [json.loads(a) for a in sys.argv[1:]] or [{}]
runners = {
    (json.dumps(o), cl, bf): Runner(
        ModelSpec(model="vts", preset="small-conv", head_hidden=512, head_dropout=0.3, overrides=o),
        128,
        time.perf_counter,
        amp=bf,
        channels_last=cl,
    )
    for o in variants
    for cl in (False, True)
    for bf in (False, True)
}
for r in runners.values():  # warm-up
    r.step(True), r.step(True)
for _ in range(4):
    for r in runners.values():
        r.rate(True, 6)
for (o, cl, bf), r in runners.items():
    print(
        f"{o:28s} {'channels-last' if cl else 'contiguous':13s} {'bf16' if bf else 'fp32':4s} {r.best[True]:6.0f} train img/s"
    )
