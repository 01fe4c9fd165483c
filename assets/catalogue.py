"""``catalogue``: ingest a source (IDX, image folder, CSV/Parquet manifest) into the validated catalogue table."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.common import lineage, remove_stale_temps
from assets.partitions import catalogues
from assets.resources import DiagnosticsResource, StorageResource
from assets.table_metadata import table_metadata
from storage.catalogue import (
    SCHEMA,
    CatalogueInfo,
    catalogue_dir,
    catalogue_facts,
    catalogue_manifest,
    fingerprint,
    read_catalogue,
    write_catalogue,
)
from storage.folder_rules import FOLDER_LABELS, Skip, skip_counts
from storage.ingest import (
    Limits,
    Rejection,
    TooManyRejects,
    ingest,
    reject_reasons,
    rejected_markdown,
)
from storage.ingest_idx import FASHION_MNIST_DIR, IDX_VALIDATION_SIZE, idx_catalogue
from storage.label_report import label_splits_markdown, split_summary, table_label_splits
from storage.protocols import Protocol
from storage.sources import SourceError, detect_kind, list_folder, list_manifest

BUILTIN_SOURCES = {"fashion-mnist": FASHION_MNIST_DIR}


class CatalogueConfig(dg.Config):
    """Where the catalogue comes from, how to read it, and its evaluation protocol (seeded, recorded with the
    table). Paths are local or fsspec URIs (``s3://bucket/key``: credentials from the environment)."""

    source: str = Field(
        default="",
        description="IDX folder, image folder or CSV/Parquet manifest; empty = the "
        "built-in source named like the partition",
    )
    kind: str = Field(default="auto", description="auto | idx | folder | manifest")
    uri_column: str = Field(
        default="uri", description="manifest: image path/URI column (relative to the manifest)"
    )
    label_columns: list[str] = Field(default=["label"], description="manifest: label column(s)")
    label_format: str = Field(
        default="values",
        description="manifest: values (names or ids, split on label_sep) "
        "| one_hot (each label column is a 0/1 flag named after its label)",
    )
    label_sep: str = Field(default="|", description="manifest: separator of several labels in one cell")
    split_column: str = Field(default="", description="manifest: column naming each image's split")
    id_column: str = Field(default="", description="manifest: image id column (default: the uri as written)")
    source_root: str = Field(
        default="", description="manifest: images must lie under this URI (default: the manifest's folder)"
    )
    folder_labels: str = Field(
        default="top",
        description="folder: " + " | ".join(FOLDER_LABELS) + "; the label of a file in nested folders: the "
        "top folder below the root, the folder holding it (named by its path), or every level (several "
        "labels per image)",
    )
    include: list[str] = Field(
        default=[],
        description="folder: only files matching these globs (e.g. '*.jpg' or 'cats/*'; repeatable)",
    )
    exclude: list[str] = Field(
        default=[], description="folder: skip files matching these globs (e.g. '*_mask.png'; repeatable)"
    )
    protocol: str = Field(
        default="auto",
        description="auto | explicit (splits from the source) | per_label; auto: "
        "explicit if a split column is given, else per_label (IDX: its train/test protocol)",
    )
    query_fraction: float = Field(
        default=0.1, description="per_label: share of each label's images drawn as queries (at least one)"
    )
    max_queries: int = Field(
        default=10_000,
        description="per_label: at most this many queries in all (the share is lowered evenly)",
    )
    train_fraction: float = Field(
        default=1.0, description="per_label: share of each label's other images drawn for training"
    )
    max_train: int = Field(default=50_000, description="per_label: at most this many training images in all")
    query_per_label: int | None = Field(
        default=None, description="per_label: exactly this many queries per label, instead of query_fraction"
    )
    train_per_label: int | None = Field(
        default=None,
        description="per_label: exactly this many training images per label, instead of train_fraction",
    )
    min_label_images: int = Field(
        default=2,
        description="per_label: labels with fewer images get no query and no training image "
        "(database only, reported per label)",
    )
    database: str = Field(
        default="all",
        description="all (every non-query image) | rest (neither query nor train; with rest, lower train_fraction)",
    )
    validation_fraction: float = Field(
        default=0.1, description="share of the training images held out for model selection (at least one)"
    )
    max_validation: int = Field(default=5_000, description="at most this many held-out validation images")
    validation_size: int | None = Field(
        default=None,
        description=f"exactly this many held-out validation images, instead of validation_fraction "
        f"(IDX: default {IDX_VALIDATION_SIZE})",
    )
    seed: int = Field(default=0, description="seed of the sampled subsets and splits")
    train_limit: int | None = Field(default=None, description="IDX only: seeded subset of training images")
    query_limit: int | None = Field(default=None, description="IDX only: seeded subset of test images")
    channels: int = Field(
        default=0, description="model channels: 0 = from the images (1 if all grey), 1 or 3"
    )
    max_pixels: int = Field(
        default=40_000_000, description="reject images with more pixels (decompression bombs)"
    )
    max_file_bytes: int = Field(default=64 << 20, description="reject larger files")
    max_reject_fraction: float = Field(default=0.05, description="fail the ingest if more items are rejected")


def _protocol(config: CatalogueConfig) -> Protocol:
    kind = (
        config.protocol if config.protocol != "auto" else ("explicit" if config.split_column else "per_label")
    )
    return Protocol(
        kind=kind,
        train_per_label=config.train_per_label,
        query_per_label=config.query_per_label,
        database=config.database,
        validation_size=config.validation_size,
        seed=config.seed,
        query_fraction=config.query_fraction,
        max_queries=config.max_queries,
        train_fraction=config.train_fraction,
        max_train=config.max_train,
        validation_fraction=config.validation_fraction,
        max_validation=config.max_validation,
        min_label_images=config.min_label_images,
    )


def idx_arguments(config: CatalogueConfig) -> dict:
    """``idx_catalogue``'s protocol arguments: the IDX train/test protocol, with its own validation size."""
    return dict(
        validation_size=IDX_VALIDATION_SIZE if config.validation_size is None else config.validation_size,
        seed=config.seed,
        train_limit=config.train_limit,
        query_limit=config.query_limit,
    )


def _previous(root, name: str) -> tuple | None:
    try:
        return read_catalogue(root, name)
    except FileNotFoundError:
        return None


def _previous_rows(root, name: str):
    """(row_id, sha256) of the stored catalogue, or None."""
    try:
        return read_catalogue(root, name, columns=["row_id", "sha256"])[0]
    except FileNotFoundError:
        return None


def changed_row_share(before, table) -> float:
    """Rows added, removed or whose image changed, as a share of the previous catalogue's rows (1.0 for a new
    catalogue): what ``retrain_on_catalogue_change`` compares with its threshold."""
    if before is None or before.num_rows == 0:
        return 1.0
    from assets.codes import plan_codes
    from storage.codes import image_hash_of

    keys = pa.schema(
        [SCHEMA.field("row_id"), SCHEMA.field("sha256")]
    )  # an ingested table may not be cast yet
    before = before.select(keys.names).cast(keys).sort_by("row_id")
    after = table.select(keys.names).cast(keys).sort_by("row_id")
    new_or_changed, removed_or_changed = plan_codes(
        after["row_id"].to_numpy(),
        image_hash_of(after["sha256"]),
        before["row_id"].to_numpy(),
        image_hash_of(before["sha256"]),
    )
    changed = len(new_or_changed) + len(np.setdiff1d(removed_or_changed, new_or_changed))
    return changed / before.num_rows


def _record(
    diagnostics: DiagnosticsResource,
    context,
    name: str,
    config: CatalogueConfig,
    rejected: list[Rejection],
    counts: dict[str, int],
    status: str,
) -> str:
    rows = [(r.item, r.reason, r.detail) for r in rejected]
    return diagnostics.get().record_ingest(
        name, config.model_dump(), rows, counts, context.run.run_id, status
    )


@dg.asset(
    partitions_def=catalogues,
    group_name="vitrieve",
    kinds={"parquet"},
    code_version="catalogue-v3",
    description="Validated catalogue table: images, labels, train/query/database protocol (Parquet); rejected "
    "items in the diagnostics DB.",
)
def catalogue(
    context: dg.AssetExecutionContext,
    config: CatalogueConfig,
    storage: StorageResource,
    diagnostics: DiagnosticsResource,
) -> dg.MaterializeResult:
    name = context.partition_key
    source = config.source or BUILTIN_SOURCES.get(name, "")
    if not source:
        raise ValueError(
            f"catalogue {name!r}: no source given and no built-in source of that name ({sorted(BUILTIN_SOURCES)})"
        )
    kind = detect_kind(source) if config.kind == "auto" else config.kind
    root = storage.get()
    remove_stale_temps(context, root, *catalogue_dir(name))
    before = _previous_rows(root, name)
    rejected: list[Rejection] = []
    skipped: list[Skip] = []
    extra: dict = {}
    if kind == "idx":
        table, info = idx_catalogue(name, source, **idx_arguments(config))
        info.label_splits = table_label_splits(table, info.label_names)
        previous = _previous(root, name)
        unchanged = (
            previous is not None
            and fingerprint(previous[0]) == fingerprint(table)
            and previous[1].protocol == info.protocol
        )
        listed = table.num_rows
    elif kind in ("folder", "manifest"):
        try:
            if kind == "folder":
                src = list_folder(
                    source,
                    explicit_splits=_protocol(config).kind == "explicit",
                    labels=config.folder_labels,
                    include=config.include,
                    exclude=config.exclude,
                )
            else:
                src = list_manifest(
                    source,
                    config.uri_column,
                    config.label_columns,
                    config.label_format,
                    config.label_sep,
                    config.split_column,
                    config.id_column,
                    config.source_root,
                )
        except SourceError as err:
            raise dg.Failure(description=f"catalogue {name!r}: unusable source: {err}") from err
        limits = Limits(config.max_pixels, config.max_file_bytes, config.max_reject_fraction)
        try:
            result = ingest(
                name,
                src,
                _protocol(config),
                limits,
                _previous(root, name),
                config.channels,
                log=context.log.debug,
            )
        except TooManyRejects as err:
            counts = {
                "listed": err.listed,
                "accepted": err.listed - len(err.skipped) - len(err.rejected),
                "rejected": len(err.rejected),
                "skipped": len(err.skipped),
            }
            _record(diagnostics, context, name, config, err.rejected, counts, "failed")
            raise dg.Failure(
                description=f"catalogue {name!r}: {err}",
                metadata={
                    "rejected": dg.MetadataValue.md(rejected_markdown(err.rejected)),
                    "reject_reasons": dg.MetadataValue.md(_reasons_markdown(err.rejected)),
                },
            ) from err
        table, info, rejected, unchanged, listed, skipped = (
            result.table,
            result.info,
            result.rejected,
            result.unchanged,
            result.listed,
            result.skipped,
        )
        extra = {"skipped": len(skipped), "added_rows": result.added, "removed_rows": result.removed}
    else:
        raise ValueError(f"catalogue source kind {kind!r} is not one of auto, idx, folder, manifest")

    counts = {"listed": listed, "accepted": table.num_rows, "rejected": len(rejected), **extra}
    if unchanged:
        context.log.info(f"catalogue {name!r} unchanged ({table.num_rows} rows); nothing written")
        uri = root.url(*catalogue_manifest(name))
    else:
        uri = write_catalogue(root, table, info)
    _record(diagnostics, context, name, config, rejected, counts, "success")
    facts = {
        "changed_row_share": changed_row_share(before, table),
        **catalogue_facts(root, name),
        "lineage": lineage(context, source=source, fingerprint=fingerprint(table)),
    }
    metadata = _metadata(table, info, uri, unchanged, counts, rejected) | _split_metadata(
        table, info, skipped
    )
    return dg.MaterializeResult(metadata=metadata | facts)


def _reasons_markdown(rejected: list[Rejection]) -> str:
    return "| reason | items | example |\n|---|---|---|\n" + "\n".join(
        f"| {reason} | {n} | {ex.item} |" for reason, n, ex in reject_reasons(rejected)
    )


def _metadata(
    table, info: CatalogueInfo, uri: str, unchanged: bool, counts: dict, rejected: list[Rejection]
) -> dict:
    flags = {
        flag: int(pc.sum(table[flag]).as_py() or 0)
        for flag in ("in_train", "in_validation", "in_query", "in_database")
    }
    return {
        "dagster/uri": uri,
        **table_metadata(SCHEMA, table.num_rows),
        "fingerprint": fingerprint(table),
        "unchanged": unchanged,
        "protocol": dg.MetadataValue.json(info.protocol),
        "splits": dg.MetadataValue.md(
            "| membership | images |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in flags.items())
        ),
        "label_names": dg.MetadataValue.json(info.label_names),
        **{
            f"{k}_items" if k in ("listed", "accepted", "rejected", "skipped") else k: v
            for k, v in counts.items()
        },
        "rejected": dg.MetadataValue.md(rejected_markdown(rejected) if rejected else "no item rejected"),
        "reject_reasons": dg.MetadataValue.md(
            _reasons_markdown(rejected) if rejected else "no item rejected"
        ),
    }


def _split_metadata(table, info: CatalogueInfo, skipped: list[Skip]) -> dict:
    """The split per label (stored with the catalogue, or counted from the table) and the skipped files."""
    splits = info.label_splits or table_label_splits(table, info.label_names)
    roles = {name: int(pc.sum(table[f"in_{name}"]).as_py() or 0) for name in ("query", "train", "validation")}
    totals = ", ".join(f"{n} {name}" for name, n in roles.items())
    skips = ", ".join(f"{n} {reason}" for reason, n in skip_counts(skipped).items())
    return {
        "split_summary": f"{totals}; " + split_summary(splits) + (f"; skipped {skips}" if skips else ""),
        "label_splits": dg.MetadataValue.md(label_splits_markdown(splits)),
        "skip_reasons": dg.MetadataValue.json(skip_counts(skipped)),
    }
