"""Where P@1 goes when the codes sit on class centres: each query's first result (least Hamming distance, ties
by database row id, as the index orders them), how many distinct database images are first results, and how
many of the P@1 misses share their first result with 100 or more other queries.

    .venv/bin/python -m experiments.top1_ties /tmp/full_run_NAME.npz   # codes saved by full_run.py, ~1 min
"""

import sys

import numpy as np

from bench.quality import load_protocol

codes = np.load(sys.argv[1])
p = load_protocol("/usr/share/datasets/fashion-mnist", 28, 1)
q, db = codes["q"].view(">u8")[:, 0], codes["db"].view(">u8")[:, 0]  # 64-bit codes as one word each
qy, dby = p.query[1].argmax(1), p.database[1].argmax(1)
first = np.empty(len(q), np.int64)
for s in range(0, len(q), 256):
    x = np.bitwise_xor(q[s : s + 256, None], db[None, :])
    dist = np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1, dtype=np.int16)
    first[s : s + 256] = dist.argmin(1)  # argmin returns the lowest row id among ties
hit = dby[first] == qy
items, counts = np.unique(first, return_counts=True)
shared = np.isin(first, items[counts >= 100])
print(
    f"P@1 {hit.mean():.4f}; {len(items)} distinct first results for {len(q)} queries; "
    f"{shared.mean():.4f} of the queries share theirs with >= 99 others"
)
print(f"misses {int((~hit).sum())}: {int((~hit & shared).sum())} of them at a shared first result")
for i, c in zip(items[counts >= 100], counts[counts >= 100], strict=True):
    print(
        f"  database row {i} (label {dby[i]}): first result of {c} queries, of which {int((qy[first == i] == dby[i]).sum())} of its label"
    )
