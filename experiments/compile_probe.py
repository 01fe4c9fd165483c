"""Train img/s of the quick model (vts small-conv, head 512), eager vs torch.compile (inductor), 2 threads, batch 128,
channels-last (as ``build_model`` makes it) under bf16 autocast where training uses it (``ml.device.bf16_autocast``):
    .venv/bin/python -m experiments.compile_probe
"""

import time

import torch

from ml.device import bf16_autocast
from ml.models import ModelSpec, build_model

AMP = bf16_autocast(torch.device("cpu"))
torch.set_num_threads(2)
spec = ModelSpec(model="vts", preset="small-conv", bits=64, head_hidden=512, head_dropout=0.3)


def run(compiled, steps=30, warm=5):
    torch.manual_seed(0)
    m = build_model(spec)
    m.train()
    f = torch.compile(m) if compiled else m
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randn(128, 1, 28, 28)
    t = torch.randint(0, 2, (128, 64)).float() * 2 - 1

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=AMP):
            u = f(x)
        loss = (torch.tanh(u.float()) - t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warm):
        step()
    tw = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    print(
        f"bf16={AMP} compiled={compiled}: warm-up {tw:.1f}s, {128 * steps / dt:.0f} train img/s", flush=True
    )


run(False)
run(True)
run(False)
