"""Training-step rate of the full-profile model on this CPU with timm's fused attention (torch SDPA) against its
unfused path (``ml.device.training_attention``), under bf16 autocast and in fp32; plus bf16 inference rates.

    .venv/bin/python -m experiments.attention_probe          # ~1 min on 2 cores
    .venv/bin/python -m experiments.attention_probe profile  # torch.profiler's top ops of 10 fused bf16 steps

Each line: median step time of 20 steps (batch 128: forward, CSQ + auxiliary classifier loss, backward, AdamW).
"""

import sys
import time

import torch

from ml.losses import build_loss
from ml.losses.auxiliary import AuxiliaryClassifier
from ml.models import build_model
from ml.recipes import build_run
from ml.train import make_optimizer

torch.set_num_threads(2)
spec, cfg = build_run("full", 10, 1)
gen = torch.Generator().manual_seed(0)
x = torch.randn(128, 1, 28, 28, generator=gen)
y = torch.nn.functional.one_hot(torch.randint(0, 10, (128,), generator=gen), 10).float()
idx = torch.arange(128)


def setup(fused: bool, amp: bool):
    """The model (every timm attention module's ``fused_attn`` set to ``fused``) and a function of one step."""
    torch.manual_seed(0)
    model = build_model(spec)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    loss_fn = build_loss(cfg.loss, 10, spec.bits, num_train=60000, seed=0)
    aux = AuxiliaryClassifier(spec.bits, 10, cfg.classifier, cfg.label_smoothing, 0)
    opt = make_optimizer(cfg, list(model.parameters()) + list(aux.parameters()))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            u = model(x)
        opt.zero_grad()
        (loss_fn(u.float(), y, idx) + aux(u, y)).backward()
        opt.step()

    return model, step


def rates(fused: bool, amp: bool) -> tuple[float, float]:
    """(train img/s, eval img/s at batch 512)."""
    model, step = setup(fused, amp)
    times = []
    for _ in range(25):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    model.eval()
    xi = torch.randn(512, 1, 28, 28, generator=gen)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        model(xi)
        t = time.perf_counter()
        for _ in range(5):
            model(xi)
        infer = 5 * 512 / (time.perf_counter() - t)
    return 128 / sorted(times[5:])[len(times[5:]) // 2], infer


if sys.argv[1:] == ["profile"]:
    _, step = setup(True, True)
    for _ in range(5):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    sys.exit()
for amp in (True, False):
    for fused in (True, False):
        train, infer = rates(fused, amp)
        print(
            f"{'bf16' if amp else 'fp32'} fused_attn={fused}: train {train:.0f} img/s, eval {infer:.0f} img/s",
            flush=True,
        )
