"""Prototype recipe sweep behind docs/BENCHMARKS.md "Quality" (exploration code, not product code).

python -m experiments.recipe_sweep NAME key=val ...  (DEVICE=cuda for the GPU proxy; see gpu_sweep.sh)
CViT (timm ConvStem + ViT, cls/mean pool) and HViT (VGG stem + ViT, flat head) live in recipe_arch.py; HViT became
the `small-conv` preset of `vts`. Results are appended as JSON lines to $LOG.
"""

import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.recipe_arch import CViT, HViT
from ml.data import augment, iterate_batches, normalise
from ml.encode import encode_images
from ml.losses import build_loss
from ml.metrics import evaluate_retrieval
from storage.idx import read_idx

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
D = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist/")
args = dict(a.split("=", 1) for a in sys.argv[2:])
name = sys.argv[1]


def g(k, d):
    v = args.get(k, d)
    return (
        type(d)(v)
        if not isinstance(d, tuple)
        else tuple(int(x) for x in v.split(","))
        if isinstance(v, str)
        else v
    )


epochs = g("epochs", 6)
lr = g("lr", 2e-3)
bs = g("bs", 128)
wd = g("wd", 0.05)
width = g("width", 96)
depth = g("depth", 3)
heads = g("heads", 3)
stem = g("stem", (16, 32, 96))
pool = g("pool", "cls")
ce = g("ce", 0.0)
ls = g("ls", 0.1)
erase = g("erase", 0.0)
ema = g("ema", 0.0)
shift = g("shift", 2)
flip = g("flip", 1)
dp = g("dp", 0.0)
loss_name = g("loss", "csq")
bits = g("bits", 64)
warm = g("warm", 200)
xtr = read_idx(D + "train-images-idx3-ubyte.gz")[:, None]
ytr = read_idx(D + "train-labels-idx1-ubyte.gz")
xte = read_idx(D + "t10k-images-idx3-ubyte.gz")[:, None]
yte = read_idx(D + "t10k-labels-idx1-ubyte.gz")
rng = np.random.default_rng(0)
val = np.sort(rng.choice(60000, 5000, replace=False))
tr = np.setdiff1d(np.arange(60000), val)
ntr = int(args.get("ntr", 0))
if ntr:
    tr = tr[:ntr]
vq = np.sort(rng.permutation(5000)[:2000])
vdb = np.sort(rng.permutation(len(tr))[:5000])
eye = np.eye(10, dtype=bool)
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
model = (
    HViT(
        bits=bits,
        width=width,
        depth=depth,
        heads=heads,
        chans=g("chans", (32, 64)),
        head=g("head", "flat"),
        hidden=g("hidden", 512),
        drop=g("drop", 0.3),
    )
    if "chans" in args
    else CViT(bits=bits, width=width, depth=depth, heads=heads, stem=stem, pool=pool, dp=dp)
)
loss_fn = build_loss(loss_name, 10, bits, num_train=len(tr), seed=0)
clf = nn.Linear(bits, 10)
params = list(model.parameters()) + list(loss_fn.parameters()) + list(clf.parameters())
groups = [
    {"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
    {"params": [p for p in params if p.ndim < 2], "weight_decay": 0},
]
opt = torch.optim.AdamW(groups, lr=lr)
steps = math.ceil(len(tr) / bs) * epochs
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda s: (
        (s + 1) / warm
        if s < warm
        else 0.5 * (1 + math.cos(math.pi * min(1, (s - warm) / max(1, steps - warm))))
    ),
)
X = torch.from_numpy(xtr[tr])
Y = torch.from_numpy(eye[ytr[tr]]).float()
Yi = torch.from_numpy(ytr[tr]).long()
dev = torch.device(os.environ.get("DEVICE", "cpu"))
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
LOG = os.environ.get("LOG", "tmp/results.jsonl")
model.to(dev)
loss_fn.to(dev)
clf.to(dev)
ema_model = copy.deepcopy(model) if ema else None
X = X.to(dev)
Y = Y.to(dev)
Yi = Yi.to(dev)


def rand_erase(x, p):
    n, _, h, w = x.shape
    m = torch.rand(n, generator=gen) < p
    for i in torch.nonzero(m).flatten().tolist():
        a = float(torch.empty(1).uniform_(0.02, 0.25, generator=gen))
        r = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(3.3), generator=gen)))
        eh = min(h, int(round(math.sqrt(a * h * w * r))))
        ew = min(w, int(round(math.sqrt(a * h * w / r))))
        i0 = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
        j0 = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
        x[i, :, i0 : i0 + eh, j0 : j0 + ew] = torch.randn(x.shape[1], eh, ew, generator=gen).to(x.device)
    return x


def val_map(m):
    q = encode_images(m, xtr[val[vq]], dev, 512)
    db = encode_images(m, xtr[tr[vdb]], dev, 512)
    return evaluate_retrieval(
        q, eye[ytr[val[vq]]], db, eye[ytr[tr[vdb]]], bits, map_ks=(100,), precision_ks=(1,)
    ).map_at["100"]


t_start = time.perf_counter()
best = (-1, 0, None)
hist = []
for ep in range(1, epochs + 1):
    model.train()
    t0 = time.perf_counter()
    ls_ = []
    for idx in iterate_batches(len(tr), bs, gen):
        idx = idx.to(dev)
        x = normalise(X[idx])
        x = augment(x, gen, shift=shift, flip=bool(flip))
        if erase:
            x = rand_erase(x, erase)
        u = model(x)
        loss = loss_fn(u, Y[idx], idx)
        if ce:
            loss = loss + ce * F.cross_entropy(clf(torch.tanh(u)), Yi[idx], label_smoothing=ls)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ls_.append(loss.item())
        if ema_model is not None:
            with torch.no_grad():
                for pe, pm in zip(ema_model.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - ema)
                for be, bm in zip(ema_model.buffers(), model.buffers(), strict=True):
                    be.copy_(bm)
    sec = time.perf_counter() - t0
    m_eval = ema_model if ema_model is not None else model
    v = val_map(m_eval)
    hist.append((ep, np.mean(ls_), v, sec))
    with open(LOG, "a") as f:
        f.write(json.dumps(dict(name=name, ep=ep, loss=float(np.mean(ls_)), val=v, sec=sec)) + "\n")
    print(
        f"{name} ep{ep} loss {np.mean(ls_):.4f} val {v:.4f} {len(tr) / sec:.0f} img/s {sec:.0f}s", flush=True
    )
    if v > best[0]:
        best = (v, ep, copy.deepcopy(m_eval.state_dict()))
train_s = time.perf_counter() - t_start
model.load_state_dict(best[2])
t0 = time.perf_counter()
nq = int(args.get("nq", 10000))
qc = encode_images(model, xte[:nq], dev, 512)
dbc = encode_images(model, xtr, dev, 512)
enc_s = time.perf_counter() - t0
r = evaluate_retrieval(qc, eye[yte[:nq]], dbc, eye[ytr], bits, map_ks=(100, 1000), precision_ks=(1, 100))
out = dict(
    name=name,
    args=args,
    best_epoch=best[1],
    best_val=best[0],
    map100=r.map_at["100"],
    map1000=r.map_at["1000"],
    p1=r.precision_at["1"],
    p100=r.precision_at["100"],
    train_s=train_s,
    encode_s=enc_s,
    enc_ips=70000 / enc_s,
    params=sum(p.numel() for p in model.parameters()),
)
print(json.dumps(out), flush=True)
with open(LOG, "a") as f:
    f.write(json.dumps(out) + "\n")
