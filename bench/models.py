"""Throughput of hashing models: ``python -m bench.models [--models ...] [--overrides JSON ...] [--threads 2]``.

Train img/s = forward + backward + AdamW step on random batches at the preset's size (a tanh-MSE loss to random
+-1 targets), under bf16 autocast where training uses it (``ml.device.bf16_autocast``; ``--no-amp``: fp32); infer img/s = ``torch.inference_mode`` forward in eval mode. Both after warm-up steps, best of the
repeats; the models are interleaved round by round so a background load hits them alike. ``--clock process``
counts CPU seconds of this process instead of wall time: on a busy machine, ``--threads 1 --clock process``
gives stable per-core rates to compare models (multiply by the 2-thread scaling of ``vts``, ~1.4x, for wall img/s).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from ml.device import bf16_autocast, training_attention
from ml.models import MODELS, ModelSpec, build_model, count_parameters


class Runner:
    """One model with its batch and optimiser; ``rate(train)`` times ``steps`` steps and keeps the best. Training
    steps run under bf16 autocast when ``amp`` (with ``training_attention``, as ``ml.train``); ``channels_last=False`` keeps PyTorch's default (contiguous) layout
    instead of ``build_model``'s channels-last one (experiments/cpu_format_probe.py compares them)."""

    def __init__(
        self, spec: ModelSpec, batch: int, clock: Callable[[], float], amp: bool, channels_last: bool = True
    ):
        torch.manual_seed(0)
        self.spec, self.batch, self.clock, self.amp = spec, batch, clock, amp
        self.model = build_model(spec)
        if not channels_last:
            self.model = self.model.to(memory_format=torch.contiguous_format)
        self.x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size)
        self.target = torch.randint(0, 2, (batch, spec.bits)).float() * 2 - 1
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.best = {True: 0.0, False: 0.0}

    def step(self, train: bool) -> None:
        if train:
            self.model.train()
            with training_attention(self.model, torch.device("cpu"), self.amp):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
                    u = self.model(self.x)
                loss = (torch.tanh(u.float()) - self.target).pow(2).mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            self.opt.step()
        else:
            self.model.eval()
            with torch.inference_mode():
                self.model(self.x)

    def rate(self, train: bool, steps: int) -> None:
        t0 = self.clock()
        for _ in range(steps):
            self.step(train)
        self.best[train] = max(self.best[train], self.batch * steps / (self.clock() - t0))


def throughput(
    specs: list[ModelSpec],
    batch: int = 128,
    steps: int = 4,
    rounds: int = 3,
    clock: str = "wall",
    amp: bool = True,
) -> list[dict]:
    """Best train and inference images/s of each spec (CPU, current torch threads), interleaved by round; training
    under bf16 autocast when ``amp`` and the CPU has native bf16 (as ``ml.train`` does)."""
    amp = amp and bf16_autocast(torch.device("cpu"))
    runners = [
        Runner(s, batch, time.perf_counter if clock == "wall" else time.process_time, amp) for s in specs
    ]
    for r in runners:  # warm-up
        r.step(True)
        r.step(False)
    for _ in range(rounds):
        for r in runners:
            r.rate(True, steps)
            r.rate(False, steps)
    return [
        dict(
            model=r.spec.model,
            preset=r.spec.preset,
            overrides=r.spec.overrides,
            params=count_parameters(r.model),
            train=r.best[True],
            infer=r.best[False],
        )
        for r in runners
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=("wall", "process"), default="wall")
    ap.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast as in training"
    )
    ap.add_argument(
        "--overrides",
        nargs="*",
        type=json.loads,
        default=[{}],
        metavar="JSON",
        help="preset overrides, one model per JSON object, e.g. '{\"stem_channels\": [32, 64]}'",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    specs = [
        ModelSpec(model=name, preset=args.preset, bits=args.bits, overrides=o)
        for name in args.models
        for o in args.overrides
    ]
    rows = throughput(specs, args.batch, args.steps, args.rounds, args.clock, args.amp)
    amp = "bf16 autocast" if args.amp and bf16_autocast(torch.device("cpu")) else "fp32"
    print(f"threads {args.threads}, batch {args.batch}, {args.clock} clock, training {amp}")
    print(f"{'model':<11} {'preset':<10} {'params':>10} {'train img/s':>12} {'infer img/s':>12}  overrides")
    for r in rows:
        print(
            f"{r['model']:<11} {r['preset']:<10} {r['params']:>10,} {r['train']:>12.0f} {r['infer']:>12.0f}  "
            f"{json.dumps(r['overrides']) if r['overrides'] else ''}"
        )


if __name__ == "__main__":
    main()
