"""Where a CSQ model's mAP@100 goes: accuracy of its codes as a classifier (nearest hash centre) on the queries
and on the database, and mAP with oracle codes on one side.

    .venv/bin/python -m experiments.retrieval_decomposition <root> <model_id>
    .venv/bin/python -m experiments.retrieval_decomposition --codes /tmp/full_run_NAME.npz  # full_run.py's codes

Prints: query accuracy (nearest centre = label), database purity (the same on the 60,000 database codes),
mAP@100 over the correctly and the wrongly coded queries (and what each group costs the whole mAP@100),
mAP@100 / P@1 as stored, with every database code replaced by its true class centre (what a perfectly fitted
database would give) and with the query codes replaced by their nearest centre; then both confusion matrices.
Full Fashion-MNIST protocol from /usr/share/datasets/fashion-mnist; ~2 min on 2 cores.
"""

import sys

import numpy as np
import torch

from bench.quality import Protocol
from ml.losses.centres import hash_centres, nearest_centre
from ml.metrics import evaluate_retrieval


def code_classes(q: np.ndarray, db: np.ndarray, protocol: Protocol, bits: int) -> dict[str, np.ndarray]:
    """Labels and nearest-centre classes of the query and database codes."""
    centres = hash_centres(len(protocol.label_names), bits)
    return dict(
        ql=protocol.query[1].argmax(1),
        dl=protocol.database[1].argmax(1),
        qc=nearest_centre(q, centres),
        dc=nearest_centre(db, centres),
    )


def code_accuracy(c: dict[str, np.ndarray]) -> dict[str, float]:
    """Query accuracy and database purity of the codes read as classes (``code_classes``)."""
    return dict(
        query_accuracy=float(np.mean(c["qc"] == c["ql"])), database_purity=float(np.mean(c["dc"] == c["dl"]))
    )


def map_by_correctness(
    q: np.ndarray, db: np.ndarray, protocol: Protocol, bits: int, c: dict[str, np.ndarray]
) -> dict[str, float]:
    """mAP@100 over the queries whose code is at their true class centre and over the others, and the share of
    the whole mAP@100 each group loses (1 - AP summed over the group, divided by all queries)."""
    out = {}
    for name, rows in (("correct", c["qc"] == c["ql"]), ("wrong", c["qc"] != c["ql"])):
        m = evaluate_retrieval(
            q[rows], protocol.query[1][rows], db, protocol.database[1], bits, map_ks=(100,), precision_ks=(1,)
        )
        out[f"map100_{name}"] = m.map_at["100"]
        out[f"cost_{name}"] = (1 - m.map_at["100"]) * rows.sum() / len(rows)
    return out


def main() -> None:
    from bench.quality import load_protocol

    if sys.argv[1] == "--codes":
        codes = np.load(sys.argv[2])
        q, db = codes["q"], codes["db"]
        bits, p = q.shape[1] * 8, load_protocol("/usr/share/datasets/fashion-mnist", 28, 1)
    else:
        from ml.checkpoint import model_from_checkpoint
        from ml.encode import encode_images
        from storage.fs import StorageRoot
        from storage.model_store import read_card, read_weights

        root, model_id = StorageRoot(sys.argv[1]), sys.argv[2]
        model = model_from_checkpoint(read_card(root, model_id), read_weights(root, model_id)).eval()
        p = load_protocol("/usr/share/datasets/fashion-mnist", model.spec.img_size, model.spec.in_chans)
        q, db = (encode_images(model, part[0], torch.device("cpu")) for part in (p.query, p.database))
        bits = model.spec.bits
    classes = len(p.label_names)
    c = code_classes(q, db, p, bits)
    acc = code_accuracy(c)
    print(f"query accuracy {acc['query_accuracy']:.4f}, database purity {acc['database_purity']:.4f}")
    split = map_by_correctness(q, db, p, bits, c)
    print(
        f"mAP@100 of the correctly coded queries {split['map100_correct']:.4f} (costs {split['cost_correct']:.4f}), "
        f"of the others {split['map100_wrong']:.4f} (costs {split['cost_wrong']:.4f})"
    )
    packed_centres = np.packbits(hash_centres(classes, bits) > 0, axis=1)
    for name, qq, dd in (
        ("as stored", q, db),
        ("database = true centres", q, packed_centres[c["dl"]]),
        ("query = nearest centre", packed_centres[c["qc"]], db),
    ):
        m = evaluate_retrieval(qq, p.query[1], dd, p.database[1], bits, map_ks=(100,), precision_ks=(1,))
        print(f"{name:24s} mAP@100 {m.map_at['100']:.4f}, P@1 {m.precision_at['1']:.4f}")
    for name, truth, pred in (("queries", c["ql"], c["qc"]), ("database", c["dl"], c["dc"])):
        cm = np.zeros((classes, classes), int)
        np.add.at(cm, (truth, pred), 1)
        print(f"{name}: rows = label, columns = nearest centre\n{cm}")


if __name__ == "__main__":
    main()
