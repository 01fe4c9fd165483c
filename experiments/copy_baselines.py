"""What the copies protocol asks of a code, measured without any model: the same 2,000 seeded copies as
``bench.quality.copy_metrics`` (``easy`` + ``hard`` families of the Fashion-MNIST database), ranked against the
60,000 database images by image-space nearest neighbour: raw pixels (L2), centred pixels (cosine), the 8 x 8
lowest DCT frequencies (cosine), and those 63 coefficients signed at their database median (a 63-bit
perceptual hash, Hamming, ties in row order). Also the source's rank under raw pixels (how many database
images lie nearer to the copy than its source). One JSON line per method.

    .venv/bin/python -m experiments.copy_baselines        # ~30 s on 2 cores
"""

from __future__ import annotations

import json

import numpy as np
from scipy.fft import dctn

from bench.quality import COPY_TRANSFORMS, load_protocol
from ml.copies import make_copy_queries, pixel_groups
from storage.ingest_idx import FASHION_MNIST_DIR

CHUNK = 250


def centred(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)


def low_dct(x: np.ndarray, k: int = 8) -> np.ndarray:
    """The k x k lowest 2-D DCT frequencies without the mean term, L2-normalised."""
    d = dctn(x[:, 0].astype(np.float32), axes=(1, 2), norm="ortho")[:, :k, :k].reshape(len(x), -1)[:, 1:]
    return d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-6)


def nearest(q: np.ndarray, db: np.ndarray, score: str) -> np.ndarray:
    """Database position of each query's best match (first in row order among ties)."""
    out = []
    for s in range(0, len(q), CHUNK):
        block = q[s : s + CHUNK]
        if score == "l2":
            d = (block**2).sum(1)[:, None] - 2 * block @ db.T + (db**2).sum(1)[None]
            out.append(d.argmin(1))
        elif score == "cosine":
            out.append((block @ db.T).argmax(1))
        else:  # hamming on bool codes
            out.append((block[:, None, :] != db[None]).sum(2).argmin(1))
    return np.concatenate(out)


def main() -> None:
    protocol = load_protocol(FASHION_MNIST_DIR, 28, 1, seed=0)
    db = protocol.database[0]
    queries = make_copy_queries(lambda p: db[p], len(db), 2000, COPY_TRANSFORMS, 0)
    groups, families = pixel_groups(db), np.array(queries.families)
    raw_db, raw_q = (
        db.reshape(len(db), -1).astype(np.float32),
        queries.images.reshape(len(queries.images), -1),
    )
    dct_db, dct_q = low_dct(db), low_dct(queries.images)
    median = np.median(dct_db, 0)
    methods = {
        "raw pixels, L2": (raw_q.astype(np.float32), raw_db, "l2"),
        "centred pixels, cosine": (centred(queries.images), centred(db), "cosine"),
        "8x8 low DCT, cosine": (dct_q, dct_db, "cosine"),
        "63-bit DCT sign hash, Hamming": (dct_q > median, dct_db > median, "hamming"),
    }
    for name, (q, d, score) in methods.items():
        hit = groups[nearest(q, d, score)] == groups[queries.source]
        row = {"method": name, "copy_r1": round(float(hit.mean()), 4)}
        row |= {f"copy_r1_{f}": round(float(hit[families == f].mean()), 4) for f in queries.family_names}
        print(json.dumps(row), flush=True)
    nearer = []
    for s in range(0, len(raw_q), CHUNK):
        block = raw_q[s : s + CHUNK].astype(np.float32)
        d = (block**2).sum(1)[:, None] - 2 * block @ raw_db.T + (raw_db**2).sum(1)[None]
        own = d[np.arange(len(block)), queries.source[s : s + CHUNK]]
        nearer.append((d < own[:, None]).sum(1))
    nearer = np.concatenate(nearer)
    easy = nearer[families == "easy"]
    print(
        json.dumps(
            {
                "method": "raw pixels: database images nearer to an easy copy than its source",
                "median": int(np.median(easy)),
                "p90": int(np.percentile(easy, 90)),
                "share_with_none": round(float((easy == 0).mean()), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
