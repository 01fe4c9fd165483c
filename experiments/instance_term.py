"""The instance term's weight against label quality and copy detection: quick-profile (``--profile``) models
trained on the Fashion-MNIST protocol with ``instance`` = each of ``--weights`` (same seed, batches and light
augmentation), then label mAP@100 and P@1 of the 10,000 queries against the 60,000-image database, the copies
protocol on that database (easy+hard copies, recall@1 under the expected tie rule per family and as listed:
Hamming ranking, and the Hamming top 400 re-ranked by the asymmetric score and by stored fp16 embeddings), the share of queries whose first result ties with >= 99 others (copies and label
queries), intra/inter-class Hamming distance of the database codes and the training minutes. One JSON line per
weight as it finishes, then a Markdown table.

    .venv/bin/python -m experiments.instance_term                   # four quick-profile trainings, full protocol
    .venv/bin/python -m experiments.instance_term --weights 0,1 --temperature 0.2 --device cuda
    .venv/bin/python -m experiments.instance_term --weights 1 --instance-bits 32 --temperature 0.1 --koleo 1
    .venv/bin/python -m experiments.instance_term --train-limit 400 --query-limit 200 --validation-size 100 \\
        --epochs 1 --copies 100                                       # a smoke test: 20 s on 2 busy cores

Other profile fields: ``--config`` as ``vitrieve bench quality`` takes it (e.g. ``'epochs=8,erase=0.25'``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from bench.quality import copy_metrics, load_protocol, parse_config, train_and_encode
from ml.instance_metrics import summarise_ties, tie_statistics
from ml.metrics import bit_diagnostics, evaluate_retrieval, hamming_distance_matrix

COLUMNS = (
    ("instance", "instance", "{:g}"),
    ("mAP@100", "map_at_100", "{:.4f}"),
    ("P@1", "p_at_1", "{:.4f}"),
    ("copy R@1 easy", "copy_r1_easy", "{:.4f}"),
    ("copy R@1 hard", "copy_r1_hard", "{:.4f}"),
    ("copy R@1 listed", "copy_r1_listed", "{:.4f}"),
    ("easy asym@4", "copy_r1_easy_asymmetric", "{:.4f}"),
    ("easy fp16@4", "copy_r1_easy_stored", "{:.4f}"),
    ("copy ties>=99", "copy_ties_ge_99", "{:.3f}"),
    ("query ties>=99", "query_ties_ge_99", "{:.3f}"),
    ("intra", "intra_class_hamming", "{:.1f}"),
    ("inter", "inter_class_hamming", "{:.1f}"),
    ("train min", "train_minutes", "{:.2f}"),
)


def query_ties(q_codes: np.ndarray, db_codes: np.ndarray, chunk: int = 256) -> float:
    """Share of the label queries whose first result (least Hamming distance) ties with >= 99 other items."""
    stats = [
        tie_statistics(hamming_distance_matrix(q_codes[s : s + chunk], db_codes))
        for s in range(0, len(q_codes), chunk)
    ]
    return summarise_ties({k: np.concatenate([s[k] for s in stats]) for k in stats[0]})["first_ties_ge_99"]


def run_weight(weight: float, args: argparse.Namespace, protocol, device: torch.device) -> dict:
    given = parse_config(args.config) | {"instance": weight, "instance_temperature": args.temperature}
    if args.koleo:
        given["instance_koleo"] = args.koleo
    if args.instance_bits:
        given["instance_bits"] = args.instance_bits
    if args.instance_loss:
        given["instance_loss"] = args.instance_loss
    if args.epochs is not None:
        given["epochs"] = args.epochs
    run = train_and_encode(
        args.profile, given, protocol, device, seed=args.seed, log=lambda s: print(s, flush=True)
    )
    bits = run.spec.bits
    m = evaluate_retrieval(
        run.q_codes,
        protocol.query[1],
        run.db_codes,
        protocol.database[1],
        bits,
        map_ks=(100,),
        precision_ks=(1,),
    )
    scorers = ("none", "asymmetric", "stored")
    copies = copy_metrics(run, protocol, device, args.copies, args.seed, scorers).metrics
    diag = bit_diagnostics(run.db_codes, protocol.database[1], bits, seed=args.seed)
    return {
        "instance": weight,
        "temperature": args.temperature,
        "koleo": args.koleo,
        "instance_bits": args.instance_bits,
        "instance_loss": args.instance_loss or "nt-xent",
        "map_at_100": m.map_at["100"],
        "p_at_1": m.precision_at["1"],
        "copy_r1_easy": copies[("none", "easy")].recall["expected"][1],
        "copy_r1_hard": copies[("none", "hard")].recall["expected"][1],
        "copy_r1_listed": copies[("none", "all")].recall["listed"][1],
        "copy_r1_easy_asymmetric": copies[("asymmetric", "easy")].recall["expected"][1],
        "copy_r1_easy_stored": copies[("stored", "easy")].recall["expected"][1],
        "copy_r1_hard_stored": copies[("stored", "hard")].recall["expected"][1],
        "copy_ties_ge_99": copies[("none", "all")].ties["first_ties_ge_99"],
        "query_ties_ge_99": query_ties(run.q_codes, run.db_codes),
        "intra_class_hamming": diag["intra_class_hamming"],
        "inter_class_hamming": diag["inter_class_hamming"],
        "train_minutes": run.train_s / 60,
        "best_epoch": run.result.best_epoch,
        "epochs_run": len(run.result.history),
    }


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt.format(r[key]) for _, key, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.instance_term", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--weights", default="0,0.1,0.3,1.0", help="instance weights, comma-separated")
    ap.add_argument("--temperature", type=float, default=0.3, help="instance_temperature of every run")
    ap.add_argument("--koleo", type=float, default=0.0, help="instance_koleo of every run (0: off)")
    ap.add_argument("--instance-bits", type=int, default=0, help="instance_bits of every run (0: all bits)")
    ap.add_argument("--profile", default="quick", help="training profile (quick | full)")
    ap.add_argument("--instance-loss", default="", help="instance_loss of every run (default: nt-xent)")
    ap.add_argument("--config", default="", help="other fields of the quick profile, key=value,...")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default: the quick profile's)")
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    ap.add_argument("--train-limit", type=int, default=None, help="training images (default: all)")
    ap.add_argument("--query-limit", type=int, default=None, help="label queries (default: all)")
    ap.add_argument("--validation-size", type=int, default=5000, help="held-out training images")
    ap.add_argument(
        "--copies", type=int, default=2000, help="copies of database images (the copies protocol)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    protocol = load_protocol(
        args.source,
        28,
        1,
        seed=args.seed,
        train_limit=args.train_limit,
        query_limit=args.query_limit,
        validation_size=args.validation_size,
    )
    rows = []
    for weight in (float(w) for w in args.weights.split(",")):
        rows.append(run_weight(weight, args, protocol, device))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
