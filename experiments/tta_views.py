"""mAP@100 / P@1 of a stored model under test-time view sets: codes = sign(sum of u over the views), queries and
database encoded alike. Views: identity, mirror, 1-px shifts (edge-replicated) and mirrored shifts.

    .venv/bin/python -m experiments.tta_views <root> <model_id>   # e.g. data vts-csq-64b-small-conv-9aa1226c

Full Fashion-MNIST protocol (10,000 queries x 60,000 database) from /usr/share/datasets/fashion-mnist; ~7 min on
2 cores (10 forward passes over 70,000 images).
"""

import sys

import torch
import torch.nn.functional as F

from bench.quality import load_protocol
from ml.checkpoint import model_from_checkpoint
from ml.data import iterate_batches, normalise
from ml.encode import pack_outputs
from ml.metrics import evaluate_retrieval
from storage.fs import StorageRoot
from storage.model_store import read_card, read_weights


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    return torch.roll(F.pad(x, (1, 1, 1, 1), mode="replicate"), (dy, dx), (2, 3))[..., 1:-1, 1:-1]


VIEWS = {"id": lambda x: x, "flip": lambda x: x.flip(-1)}
for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
    VIEWS[f"s{dx}{dy}"] = lambda x, dx=dx, dy=dy: shift(x, dx, dy)
    VIEWS[f"fs{dx}{dy}"] = lambda x, dx=dx, dy=dy: shift(x.flip(-1), dx, dy)
SETS = {
    "identity": ["id"],
    "mirror (flip_tta)": ["id", "flip"],
    "4 shifts": ["id", "s10", "s-10", "s01", "s0-1"],
    "mirror x 4 shifts": list(VIEWS),
}


@torch.inference_mode()
def outputs(model: torch.nn.Module, images) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {k: [] for k in VIEWS}
    for idx in iterate_batches(len(images), 512):
        x = normalise(torch.from_numpy(images[idx.numpy()]))
        for k, view in VIEWS.items():
            out[k].append(model(view(x)))
    return {k: torch.cat(v) for k, v in out.items()}


root, model_id = StorageRoot(sys.argv[1]), sys.argv[2]
model = model_from_checkpoint(read_card(root, model_id), read_weights(root, model_id)).eval()
protocol = load_protocol("/usr/share/datasets/fashion-mnist", model.spec.img_size, model.spec.in_chans)
uq, udb = outputs(model, protocol.query[0]), outputs(model, protocol.database[0])
for name, views in SETS.items():
    q, db = (pack_outputs(sum(u[v] for v in views)) for u in (uq, udb))
    m = evaluate_retrieval(
        q, protocol.query[1], db, protocol.database[1], model.spec.bits, map_ks=(100,), precision_ks=(1,)
    )
    print(
        f"{name:18s} {len(views):2d} views: mAP@100 {m.map_at['100']:.4f}, P@1 {m.precision_at['1']:.4f}",
        flush=True,
    )
