"""Training rate of the full-profile model (``vts`` small-conv, 512-wide head) on this CPU by memory format and
precision: contiguous (NCHW) vs channels-last weights, fp32 vs bf16 autocast. Interleaved rounds, best of 4.

    .venv/bin/python docs/experiments/cpu_format_probe.py ['{"stem_channels": [32, 64]}' ...]
"""

import json
import sys
import time

import torch

sys.path.insert(0, ".")
from ml.models import ModelSpec, build_model

torch.set_num_threads(2)


def train_step(overrides: dict, channels_last: bool, bf16: bool):
    torch.manual_seed(0)
    spec = ModelSpec(model="vts", preset="small-conv", head_hidden=512, head_dropout=0.3, overrides=overrides)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(spec).to(memory_format=fmt)
    x, target = torch.randn(128, 1, 28, 28), torch.randint(0, 2, (128, 64)).float() * 2 - 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            u = model(x)
        loss = (torch.tanh(u.float()) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


variants = [json.loads(a) for a in sys.argv[1:]] or [{}]
steps = {(json.dumps(o), cl, bf): train_step(o, cl, bf) for o in variants for cl in (False, True) for bf in (False, True)}
best = dict.fromkeys(steps, 0.0)
for s in steps.values():
    s(), s()
for _ in range(4):
    for key, s in steps.items():
        t0 = time.perf_counter()
        for _ in range(6):
            s()
        best[key] = max(best[key], 128 * 6 / (time.perf_counter() - t0))
for (o, cl, bf), rate in best.items():
    print(f"{o:28s} {'channels-last' if cl else 'contiguous':13s} {'bf16' if bf else 'fp32':4s} {rate:6.0f} train img/s")
