"""``catalogue``: ingest a source into the validated catalogue table."""


import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from assets.common import file_facts, lineage
from assets.partitions import catalogues
from pipelines.resources import StorageResource
from storage.catalogue import catalogue_parts, fingerprint, read_catalogue, write_catalogue
from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue

BUILTIN_SOURCES = {"fashion-mnist": FASHION_MNIST_DIR}


class CatalogueConfig(dg.Config):
    """Where the catalogue comes from and its evaluation protocol (seeded, recorded with the table)."""

    source: str = Field(default="", description="IDX directory; empty = the built-in source named like the partition")
    validation_size: int = 5000
    seed: int = 0
    train_limit: int | None = None
    query_limit: int | None = None


@dg.asset(
    partitions_def=catalogues,
    group_name="vitrieve",
    kinds={"parquet"},
    code_version="catalogue-v1",
    description="Validated catalogue table: images, labels, train/query/database protocol (Parquet).",
)
def catalogue(context: dg.AssetExecutionContext, config: CatalogueConfig, storage: StorageResource) -> dg.MaterializeResult:
    name = context.partition_key
    source = config.source or BUILTIN_SOURCES.get(name, "")
    if not source:
        raise ValueError(f"catalogue {name!r}: no source given and no built-in source of that name ({sorted(BUILTIN_SOURCES)})")
    table, info = idx_catalogue(
        name, source, validation_size=config.validation_size, seed=config.seed,
        train_limit=config.train_limit, query_limit=config.query_limit,
    )  # fmt: skip
    root = storage.get()
    fp = fingerprint(table)
    try:
        old, old_info = read_catalogue(root, name, columns=["row_id", "sha256", "labels", "in_train", "in_query", "in_database"])
        unchanged = fingerprint(old) == fp and old_info.protocol == info.protocol
    except FileNotFoundError:
        unchanged = False
    if unchanged:
        context.log.info(f"catalogue {name!r} unchanged ({table.num_rows} rows, fingerprint {fp}); nothing written")
        uri = root.url("catalogues", name, "catalogue.parquet")
    else:
        uri = write_catalogue(root, table, info)
    counts = {flag: int(pc.sum(table[flag]).as_py()) for flag in ("in_train", "in_validation", "in_query", "in_database")}
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": uri,
            "dagster/row_count": table.num_rows,
            "fingerprint": fp,
            "unchanged": unchanged,
            "protocol": dg.MetadataValue.json(info.protocol),
            "splits": dg.MetadataValue.md(
                "| membership | images |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in counts.items())
            ),
            "label_names": dg.MetadataValue.json(info.label_names),
            **file_facts(root, *catalogue_parts(name)),
            "lineage": lineage(context, source=source, fingerprint=fp),
        }
    )
