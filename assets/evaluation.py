"""``model_evaluation``: retrieval metrics and bit diagnostics of the stored codes, into DuckDB."""

import dagster as dg
import numpy as np
from pydantic import Field

from assets.automation import FOLLOW_ACCEPTED_UPSTREAM
from assets.common import (
    current_model_id,
    lineage,
    load_model,
    model_inputs,
    png_markdown,
    remove_stale_temps,
)
from assets.partitions import catalogues
from assets.plots import attention_png, bit_balance_png, pr_curve_png, retrieval_grid_png
from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
from storage.catalogue import labels_matrix, read_catalogue
from storage.codes import read_codes
from storage.diagnostics import (
    insert_bit_stats,
    insert_instance_metrics,
    insert_metrics,
    insert_per_class,
    insert_pr_curve,
)
from storage.model_store import update_card


class EvaluationConfig(dg.Config):
    model_id: str = Field(
        default="", description="Model to evaluate; empty = the catalogue's latest hashing_model"
    )
    stability_sample: int = 2000
    seed: int = 0
    examples: int = Field(
        default=6, description="queries shown with their top-8 in the retrieval examples grid"
    )
    attention_examples: int = Field(
        default=4, description="queries shown with their attention rollout (ViT models)"
    )
    copy_protocol: bool = Field(
        default=False,
        description="also run the instance protocol: seeded transformed copies of database images as "
        "queries, their source row (and its exact duplicates) as ground truth",
    )
    copies: int = Field(default=2000, description="database images copied into instance queries")
    copy_transforms: str = Field(
        default="easy+hard", description="transform families of the copies, '+'-combined: easy, hard"
    )
    rerank: str = Field(
        default="asymmetric",
        description="re-ranking scorers also measured on the copies, comma-separated: asymmetric, stored "
        "('stored' needs embeddings stored with the codes); '' = Hamming ranking only",
    )
    oversample: int = Field(
        default=4, description="re-ranked shortlist = oversample x 100 Hamming neighbours"
    )


@dg.asset(
    partitions_def=catalogues,
    deps=["packed_codes"],
    group_name="vitrieve",
    kinds={"duckdb"},
    pool="duckdb_writer",
    code_version="model_evaluation-v1",
    automation_condition=FOLLOW_ACCEPTED_UPSTREAM,
    description="mAP@k, P@k, PR by Hamming radius and bit diagnostics (queries vs database) -> DuckDB.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    storage: StorageResource,
    diagnostics: DiagnosticsResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    from ml.data import augment
    from ml.encode import encode_images
    from ml.metrics import bit_diagnostics, chance_precision, code_stability, evaluate_retrieval

    name = context.partition_key
    root = storage.get()
    model_id = current_model_id(context, config.model_id)
    remove_stale_temps(context, root, "models", model_id, "eval", name)
    table, info = read_catalogue(
        root, name, columns=["row_id", "image", "uri", "sha256", "labels", "in_query", "in_database"]
    )
    row_ids, codes, meta = read_codes(root, name, model_id)
    bits = meta.bits
    if not np.array_equal(row_ids, table["row_id"].to_numpy()):
        raise ValueError(
            f"codes of {model_id} do not cover catalogue {name!r} row for row; re-run packed_codes"
        )
    labels = labels_matrix(table, len(info.label_names))
    q = table["in_query"].to_numpy(zero_copy_only=False)
    db = table["in_database"].to_numpy(zero_copy_only=False)
    result = evaluate_retrieval(codes[q], labels[q], codes[db], labels[db], bits)
    chance = chance_precision(labels[q], labels[db])
    bitstats = bit_diagnostics(codes[db], labels[db], bits, seed=config.seed)

    # Stability: re-encode a seeded database sample under the light augmentation used in training.
    device = compute.torch_device()
    model, card = load_model(root, model_id, device)
    db_idx = np.flatnonzero(db)
    pick = np.sort(np.random.default_rng(config.seed).permutation(db_idx)[: config.stability_sample])
    sample = table.take(pick)
    _, images, _ = model_inputs(sample, model.spec.img_size, model.spec.in_chans, len(info.label_names))
    import torch

    gen = torch.Generator().manual_seed(config.seed)
    shifted = encode_images(model, images, device, transform=lambda x: augment(x, gen, shift=1, flip=False))
    stability = code_stability(codes[pick], shifted, bits)
    copy = _copy_protocol(root, name, model_id, table, info, db, row_ids, codes, bits, model, device, config)

    metric_rows = (
        [("map", _k(k), v) for k, v in result.map_at.items()]
        + [("precision", int(k), v) for k, v in result.precision_at.items()]
        + [("recall", int(k), v) for k, v in result.recall_at.items()]
        + [("precision_within_radius", 2, result.precision_within_radius2)]
        + [("chance_precision", None, chance)]
        + [(k, None, float(v)) for k, v in bitstats.items() if not isinstance(v, list)]
        + [(k, None, float(v)) for k, v in stability.items()]
    )
    pr_rows = [
        (r, p, rc)
        for r, (p, rc) in enumerate(zip(result.precision_radius, result.recall_radius, strict=True))
    ]
    protocol = dict(
        catalogue=name, queries=int(q.sum()), database=int(db.sum()), protocol=info.protocol, bits=bits
    )
    if copy is not None:
        protocol["copies"] = dict(
            queries=copy.metrics[("none", "all")].n,
            transforms=config.copy_transforms,
            seed=config.seed,
            rerank=config.rerank,
            oversample=config.oversample,
        )

    def write(run_id: str, con) -> None:
        insert_metrics(con, run_id, metric_rows)
        insert_pr_curve(con, run_id, pr_rows)
        insert_bit_stats(con, run_id, bitstats["ones_rate"], bitstats["entropy"])
        insert_per_class(con, run_id, [(label, ap, n) for label, (ap, n) in result.per_class_ap.items()])
        if copy is not None:
            insert_instance_metrics(con, run_id, copy.rows())

    run_id = diagnostics.get().record("evaluation", name, model_id, protocol, context.run.run_id, write)

    figures = {
        "pr_curve": pr_curve_png(result.precision_radius, result.recall_radius, f"{name} · {bits} bits"),
        "bit_balance": bit_balance_png(bitstats["ones_rate"], f"{name} · {model_id}"),
        **_examples(table, info.label_names, labels, codes, q, db, model, device, config),
    }
    for fig_name, png in figures.items():
        root.write_bytes(png, "models", model_id, "eval", name, f"{fig_name}.png")
    headline = {
        "map@100": result.map_at.get("100"),
        "map@1000": result.map_at.get("1000"),
        "map@all": result.map_at.get("all"),
        "p@1": result.precision_at.get("1"),
        "p@100": result.precision_at.get("100"),
        "precision_within_radius2": result.precision_within_radius2,
    }
    copy_headline = copy.headline() if copy is not None else {}
    update_card(
        root, model_id, evaluation={"run_id": run_id, "protocol": protocol, **headline, **copy_headline}
    )
    table_md = "| metric | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.4f} |" for k, v in headline.items() if v is not None
    )
    bits_md = (
        "\n".join(
            f"| {k} | {float(bitstats[k]):.4f} |"
            for k in (
                "mean_ones_rate",
                "mean_entropy",
                "redundancy",
                "intra_class_hamming",
                "inter_class_hamming",
                "unique_codes",
            )
        )
        + f"\n| stability | {stability['stability']:.4f} |\n| exact_match_rate | {stability['exact_match_rate']:.4f} |"
    )
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "map_at_100": float(result.map_at["100"]),
            "p_at_1": float(result.precision_at["1"]),
            "chance_precision": chance,
            "metrics": dg.MetadataValue.md(table_md),
            "bit_diagnostics": dg.MetadataValue.md("| diagnostic | value |\n|---|---|\n" + bits_md),
            **{
                fig_name: dg.MetadataValue.md(png_markdown(png, CAPTIONS[fig_name]))
                for fig_name, png in figures.items()
            },
            **({"copy_metrics": dg.MetadataValue.md(_copy_table(copy))} if copy is not None else {}),
            **{k.replace("@", "_at_"): float(v) for k, v in copy_headline.items()},
            "protocol": dg.MetadataValue.json(protocol),
            "diagnostics_run_id": run_id,
            "lineage": lineage(context, model_id=model_id, catalogue=name),
        }
    )


CAPTIONS = {
    "pr_curve": "PR curve by Hamming radius",
    "bit_balance": "Per-bit ones rate (ideal 0.5)",
    "retrieval_examples": "Queries and their top-8 (distance, label; wrong labels in red)",
    "attention_rollout": "Attention rollout of the first queries",
}
TOP = 8


def _examples(
    table,
    label_names: list[str],
    labels: np.ndarray,
    codes: np.ndarray,
    q: np.ndarray,
    db: np.ndarray,
    model,
    device,
    config: EvaluationConfig,
) -> dict[str, bytes]:
    """Retrieval examples grid (seeded queries, exact Hamming top-8, ties by row_id) and attention rollout."""
    from ml.attention import attention_rollout
    from ml.metrics import hamming_distance_matrix

    q_idx, db_idx = np.flatnonzero(q), np.flatnonzero(db)
    pick = np.sort(np.random.default_rng(config.seed).permutation(q_idx)[: config.examples])
    dist = hamming_distance_matrix(codes[pick], codes[db_idx])
    top = np.argsort(dist, axis=1, kind="stable")[:, :TOP]  # database rows are in row_id order
    hits = db_idx[top]
    size, ch = model.spec.img_size, model.spec.in_chans

    def decode(rows: np.ndarray) -> np.ndarray:  # stored bytes or the row's URI (sha256-checked)
        _, images, _ = model_inputs(table.take(rows.ravel()), size, ch, len(label_names))
        return images.reshape(*rows.shape, ch, size, size)

    def name(row: int) -> str:
        return ",".join(label_names[i] for i in np.flatnonzero(labels[row])) or "?"

    out = {}
    if len(pick):
        query_images = decode(pick)
        out["retrieval_examples"] = retrieval_grid_png(
            query_images,
            [name(r) for r in pick],
            decode(hits),
            [[name(r) for r in row] for row in hits],
            np.take_along_axis(dist, top, axis=1),
            (labels[pick][:, None, :] & labels[hits]).any(axis=2),
        )
        n_att = min(config.attention_examples, len(pick))
        maps = attention_rollout(model, query_images[:n_att], device) if n_att else None
        if maps is not None:
            out["attention_rollout"] = attention_png(
                query_images[:n_att], maps, [name(r) for r in pick[:n_att]]
            )
    return out


def _k(key: str) -> int | None:
    return None if key == "all" else int(key)


def _copy_protocol(root, name, model_id, table, info, db, row_ids, codes, bits, model, device, config):
    """The instance protocol (``ml.copies``) on the database rows, when ``config.copy_protocol``; exact
    duplicates are the rows with the same image sha256."""
    if not config.copy_protocol:
        return None
    from ml.copies import evaluate_copies, make_copy_queries
    from ml.encode import encode_outputs
    from ml.rerank import CandidateTable, dequantise
    from storage.codes import image_hash_of

    scorers = list(dict.fromkeys(["none", *(s.strip() for s in config.rerank.split(",") if s.strip())]))
    db_idx = np.flatnonzero(db)
    db_table = table.take(db_idx)
    size, ch = model.spec.img_size, model.spec.in_chans

    def read(pos: np.ndarray) -> np.ndarray:
        return model_inputs(db_table.take(pos), size, ch, len(info.label_names))[1]

    queries = make_copy_queries(read, len(db_idx), config.copies, config.copy_transforms, config.seed)
    q_codes, q_u = encode_outputs(model, queries.images, device)
    embeddings = None
    if "stored" in scorers:
        from storage.embeddings import read_embeddings

        e_ids, data, scale, dtype = read_embeddings(root, name, model_id)
        keep = np.isin(e_ids, row_ids[db_idx])
        if not np.array_equal(e_ids[keep], row_ids[db_idx]):
            raise ValueError(
                f"stored embeddings of {model_id} miss database rows of {name!r}; re-run packed_codes"
            )
        embeddings = dequantise(data[keep], None if scale is None else scale[keep], dtype)
    cand = CandidateTable(row_ids[db_idx], codes[db_idx], bits, embeddings)
    group = image_hash_of(db_table["sha256"])
    return evaluate_copies(queries, q_codes, q_u, cand, group, scorers, config.oversample)


def _copy_table(copy) -> str:
    """Markdown: recall@1/10/100 and MRR per (scorer, family), expected and listed rank."""
    lines = [
        "| scorer | family | rule | R@1 | R@10 | R@100 | MRR | ties>=99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (scorer, family), m in copy.metrics.items():
        for rule in ("expected", "listed", "pessimistic"):
            r = m.recall[rule]
            lines.append(
                f"| {scorer} | {family} | {rule} | {r[1]:.4f} | {r[10]:.4f} | {r[100]:.4f} | "
                f"{m.mrr[rule]:.4f} | {m.ties.get('first_ties_ge_99', float('nan')):.3f} |"
            )
    return "\n".join(lines)
