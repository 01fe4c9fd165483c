"""``binary_index``: FAISS binary index over the database codes, published only if it verifies.

The kind (flat | flat-dedup | hnsw | ivf | multihash) and its parameters are chosen per catalogue in the
config; left empty, the kind and parameters published for the catalogue are kept (else ``flat``), so the
nightly job keeps each catalogue's choice. With the model unchanged and only new rows in the codes, the
previous index of the same model, kind and parameters is extended with the new rows (rows gone or changed are
dropped in place where the kind can remove); otherwise it is rebuilt from the stored codes (never by encoding
again). Tombstones (``storage/index/tombstones.py``) are compacted: deleted rows are left out, updated codes
merged in.
"""

import json

import dagster as dg
import numpy as np
from pydantic import Field, create_model

from assets.automation import FOLLOW_ACCEPTED_UPSTREAM, INDEX_FRESHNESS
from assets.common import current_model_id, lineage, remove_stale_temps
from assets.partitions import catalogues
from assets.resources import StorageResource
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.fs import StorageRoot
from storage.index import (
    DEFAULT_KIND,
    compact_tombstones,
    current,
    get_kind,
    index_dir,
    index_from_codes,
    kind_names,
    load_index,
    param_fields,
    publish,
    read_tombstones,
    set_search_threads,
    verify_index,
    write_index,
)


class _IndexChoice(dg.Config):
    model_id: str = Field(
        default="", description="Model whose codes to index; empty = the latest hashing_model"
    )
    kind: str = Field(
        default="",
        description=f"one of {', '.join(kind_names())}; empty = the kind published for this catalogue, "
        f"else {DEFAULT_KIND}",
    )


#: ``binary_index`` config: the kind, one optional field per kind parameter (from the registry), then the run
IndexConfig = create_model(
    "IndexConfig",
    __base__=_IndexChoice,
    __module__=__name__,
    **{name: (int | None, Field(default=None, description=text)) for name, text in param_fields().items()},
    incremental=(
        bool,
        Field(
            default=True,
            description="add only new rows to the previous index of the same model/kind/parameters when possible",
        ),
    ),
    threads=(int, Field(default=0, description="faiss threads for building (0 = all cores)")),
    probes=(int, 256),
)


def database_rows(root, name: str) -> np.ndarray:
    """Sorted row_ids of the catalogue's database rows."""
    table, _ = read_catalogue(root, name, columns=["row_id", "in_database"])
    return np.sort(table.filter(table["in_database"])["row_id"].to_numpy())


def database_codes(root, name: str, model_id: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(row_ids, codes, bits) of the catalogue's database rows under ``model_id``."""
    row_ids, codes, meta = read_codes(root, name, model_id)
    db = np.isin(row_ids, database_rows(root, name))
    return row_ids[db], codes[db], meta.bits


def chosen_kind(root: StorageRoot, name: str, config: IndexConfig) -> tuple[str, dict]:
    """(kind, explicit params): the config's, else the published ones of the catalogue, else flat."""
    given = {f: getattr(config, f) for f in param_fields() if getattr(config, f) is not None}
    if config.kind:
        return config.kind, given
    try:
        pointer = current(root, name)
    except FileNotFoundError:
        return DEFAULT_KIND, given
    return pointer["kind"], {**(pointer.get("params") or {}), **given}


@dg.asset(
    partitions_def=catalogues,
    deps=["packed_codes"],
    group_name="vitrieve",
    kinds={"faiss"},
    code_version="binary_index-v2",
    automation_condition=FOLLOW_ACCEPTED_UPSTREAM,
    freshness_policy=INDEX_FRESHNESS,
    description="FAISS binary index (ids = row_id) of the configured kind with manifest; CURRENT moves only "
    "after the written file verifies.",
)
def binary_index(
    context: dg.AssetExecutionContext, config: IndexConfig, storage: StorageResource
) -> dg.MaterializeResult:
    name = context.partition_key
    root = storage.get()
    model_id = current_model_id(context, config.model_id)
    remove_stale_temps(context, root, "indexes", name)
    kind, params = chosen_kind(root, name, config)
    item = f"binary_index of {name!r}"
    get_kind(kind, item)  # an unknown kind fails here, naming the item and the kinds to choose from
    threads = set_search_threads(config.threads or None)
    previous = None
    if config.incremental and root.exists(*index_dir(name, model_id), f"{kind}.manifest.json"):
        try:
            previous = load_index(root, name, model_id, kind, mmap=False)
        except (OSError, ValueError, RuntimeError) as err:  # unreadable or corrupt: rebuild from the codes
            context.log.warning(
                f"previous {kind} index of {name!r} unusable ({err}); rebuilding from the codes"
            )
    db_rows, stones = database_rows(root, name), read_tombstones(root, name)  # deletes/updates to compact
    overrides = stones.overrides(root, name, model_id) if stones else None
    index, row_ids, codes, report = index_from_codes(
        root,
        name,
        model_id,
        kind,
        params,
        keep_rows=stones.keep(db_rows) if stones else db_rows,
        previous=previous,
        item=item,
        overrides=overrides,
    )
    pointer = _pointer_or_none(root, name)
    if report.mode == "unchanged":
        manifest = previous[1]
        if pointer and pointer["sha256"] == manifest.version:
            context.log.info(f"{kind} index of {name!r} already holds every database row; CURRENT unchanged")
            if stones:
                compact_tombstones(root, name, stones, manifest, db_rows, overrides[0])
            return _result(context, root, name, manifest, report, threads, published=False)
    problems = verify_index(index, row_ids, codes, probes=config.probes)
    if problems:
        raise ValueError(
            f"new index for {name!r} failed verification, CURRENT left unchanged: {'; '.join(problems)}"
        )
    if report.mode != "unchanged":
        manifest = write_index(
            root,
            index,
            name,
            model_id,
            kind,
            int(index.bits),
            len(row_ids),
            report.build_seconds,
            mode=report.mode,
            source=report.source,
        )
    del index
    written, _ = load_index(
        root, name, model_id, kind
    )  # the stored file: sha256 against the manifest, then probes
    problems = verify_index(written, row_ids, codes, probes=config.probes, seed=1)
    if problems:
        raise ValueError(
            f"written index for {name!r} failed verification, CURRENT left unchanged: {'; '.join(problems)}"
        )
    publish(root, manifest)
    if stones:  # the published index holds the deletes and updates read above
        compact_tombstones(root, name, stones, manifest, db_rows, overrides[0])
    context.log.info(
        f"published {kind} index of {manifest.ntotal} codes for {name!r} ({model_id}, {report.mode}, "
        f"{report.added_rows} rows added in {report.build_seconds:.2f}s)"
    )
    return _result(context, root, name, manifest, report, threads, published=True)


def _pointer_or_none(root, name: str) -> dict | None:
    try:
        return current(root, name)
    except FileNotFoundError:
        return None


def _result(context, root, name, manifest, report, threads: int, published: bool) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "model_id": manifest.model_id,
            "kind": manifest.kind,
            "params": dg.MetadataValue.json(manifest.params),
            "dagster/uri": root.url(*index_dir(name, manifest.model_id), manifest.file),
            "ntotal": manifest.ntotal,
            "dagster/row_count": manifest.ntotal,
            "bytes": manifest.file_bytes,
            "bytes_per_image": manifest.file_bytes / max(manifest.ntotal, 1),
            "sha256": manifest.version,
            "delta_rows": manifest.delta.get("ntotal", 0),
            "build_seconds": report.build_seconds,
            "read_seconds": report.read_seconds,
            "mode": report.mode,
            "added_rows": report.added_rows,
            "removed_rows": report.removed_rows,
            "threads": threads,
            "published": published,
            "manifest": dg.MetadataValue.json(json.loads(json.dumps(manifest.__dict__))),
            "lineage": lineage(context, model_id=manifest.model_id),
        }
    )
