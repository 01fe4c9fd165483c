"""Where a CSQ model's mAP@100 goes: accuracy of its codes as a classifier (nearest hash centre) on the queries
and on the database, and mAP with oracle codes on one side.

    .venv/bin/python docs/experiments/retrieval_decomposition.py <root> <model_id>

Prints: query accuracy (nearest centre = label), database purity (the same on the 60,000 database codes),
mAP@100 / P@1 as stored, with every database code replaced by its true class centre (what a perfectly fitted
database would give) and with the query codes replaced by their nearest centre; then both confusion matrices.
Full Fashion-MNIST protocol from /usr/share/datasets/fashion-mnist; ~2 min on 2 cores.
"""

import sys

import numpy as np
import torch

sys.path.insert(0, ".")
from ml.checkpoint import model_from_checkpoint
from ml.encode import encode_images
from ml.losses.centres import hash_centres, nearest_centre
from ml.metrics import evaluate_retrieval
from pipelines.quality_bench import load_protocol
from storage.fs import StorageRoot
from storage.model_store import read_card, read_weights

root, model_id = StorageRoot(sys.argv[1]), sys.argv[2]
model = model_from_checkpoint(read_card(root, model_id), read_weights(root, model_id)).eval()
p = load_protocol("/usr/share/datasets/fashion-mnist", model.spec.img_size, model.spec.in_chans)
q, db = (encode_images(model, part[0], torch.device("cpu")) for part in (p.query, p.database))
bits, classes = model.spec.bits, p.query[1].shape[1]
centres = hash_centres(classes, bits)
packed_centres = np.packbits(centres > 0, axis=1)
ql, dl = p.query[1].argmax(1), p.database[1].argmax(1)
qc, dc = nearest_centre(q, centres), nearest_centre(db, centres)
print(f"query accuracy {np.mean(qc == ql):.4f}, database purity {np.mean(dc == dl):.4f}")
for name, qq, dd in (
    ("as stored", q, db),
    ("database = true centres", q, packed_centres[dl]),
    ("query = nearest centre", packed_centres[qc], db),
):
    m = evaluate_retrieval(qq, p.query[1], dd, p.database[1], bits, map_ks=(100,), precision_ks=(1,))
    print(f"{name:24s} mAP@100 {m.map_at['100']:.4f}, P@1 {m.precision_at['1']:.4f}")
for name, truth, pred in (("queries", ql, qc), ("database", dl, dc)):
    cm = np.zeros((classes, classes), int)
    np.add.at(cm, (truth, pred), 1)
    print(f"{name}: rows = label, columns = nearest centre\n{cm}")
