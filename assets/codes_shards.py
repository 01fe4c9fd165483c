"""``packed_codes`` as a graph of steps, one per catalogue shard (``storage.shards``), for catalogues too big
for one worker: ``plan_codes_shards`` lists the shards and fans out (``DynamicOut``) the unfinished ones,
``encode_codes_shard`` encodes one shard into its own part (one step each: a Celery task or a Kubernetes pod,
retried on its own), ``commit_codes_shards`` makes them live in one switch of ``parts.json``.

Same asset key, partitions, dependencies and run config (``ops: {packed_codes: {config: ...}}``) as the
one-step ``assets.codes.packed_codes``; the code location serves this one when ``VITRIEVE_SHARD_ROWS`` is set
(``pipelines.definitions``). The codes are the same row for row: both go through ``assets.codes.encode_batches``.
A rerun re-encodes only shards whose inputs changed or whose part is missing or damaged.
"""

import os
import time

import dagster as dg
from pydantic import Field

from assets.automation import FOLLOW_ACCEPTED_UPSTREAM
from assets.codes import CodesConfig, _embedding_bytes, encode_batches, open_codes_run
from assets.partitions import catalogues
from assets.resources import ComputeResource, StorageResource
from assets.shard_io import HANDOFF, handoff_io_manager
from assets.table_metadata import codes_schema, table_metadata
from storage.catalogue import SHARD_ROWS, fingerprint
from storage.codes import codes_dir, image_hash_of
from storage.embeddings import META_KEY
from storage.model_store import card_bits, read_card
from storage.shards import (
    Shard,
    commit_shards,
    finished_shard,
    plan_shards,
    record_shard,
    shard_batches,
)

SHARD_ROWS_ENV = "VITRIEVE_SHARD_ROWS"
CODE_VERSION = "packed_codes-v2"  # the codes are those of the one-step asset


def shard_rows_from_env() -> int:
    """``VITRIEVE_SHARD_ROWS`` as a positive int; 0 when unset (the one-step ``packed_codes``)."""
    raw = os.environ.get(SHARD_ROWS_ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{SHARD_ROWS_ENV}={raw!r}: expected a positive number of rows per shard")
    return int(raw)


class ShardedCodesConfig(CodesConfig):
    shard_rows: int = Field(
        default=shard_rows_from_env() or SHARD_ROWS,
        description="catalogue rows per shard (row-id range); each shard is one step",
    )


@dg.op(
    ins={"hashing_model": dg.In(dg.Nothing)},
    out={"plan": dg.Out(dict, io_manager_key=HANDOFF), "todo": dg.DynamicOut(dict, io_manager_key=HANDOFF)},
    description="List the catalogue's shards; fan out those without a finished part.",
)
def plan_codes_shards(context: dg.OpExecutionContext, config: ShardedCodesConfig, storage: StorageResource):
    name, root, model_id, table = open_codes_run(context, config, storage)
    bits = card_bits(read_card(root, model_id))
    inputs = {
        "model_id": model_id,
        "bits": bits,
        "embeddings": config.embeddings,
        "code_version": CODE_VERSION,
    }
    shards = plan_shards(
        table["row_id"].to_numpy(), image_hash_of(table["sha256"]), config.shard_rows, inputs
    )
    todo = [s for s in shards if not config.incremental or finished_shard(root, name, model_id, s) is None]
    context.log.info(
        f"codes of {name!r} under {model_id}: {len(shards)} shards of up to {config.shard_rows} rows, "
        f"{len(todo)} to encode"
    )
    yield dg.Output(
        {
            "model_id": model_id,
            "bits": bits,
            "fingerprint": fingerprint(table),
            "rows": table.num_rows,
            "shards": [s.to_dict() for s in shards],
            "encoded_shards": [s.index for s in todo],
            "config": config.model_dump(),
        },
        "plan",
    )
    for shard in todo:
        job = {"model_id": model_id, "bits": bits, "shard": shard.to_dict(), "config": config.model_dump()}
        yield dg.DynamicOutput(job, output_name="todo", mapping_key=f"shard_{shard.index:05d}")


@dg.op(
    out=dg.Out(dict, io_manager_key=HANDOFF),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
    tags={"vitrieve/step": "encode_shard"},
    description="Encode one shard into its own part and record its check.",
)
def encode_codes_shard(
    context: dg.OpExecutionContext, storage: StorageResource, compute: ComputeResource, job: dict
) -> dict:
    name, root = context.partition_key, storage.get()
    shard, config = Shard.from_dict(job["shard"]), ShardedCodesConfig(**job["config"])
    model_id, bits = job["model_id"], job["bits"]
    record = finished_shard(root, name, model_id, shard)  # finished by an earlier try of this step
    if record is not None:
        context.log.info(f"shard {shard.index} of {name!r} already encoded ({shard.rows} rows)")
        return {"index": shard.index, "rows": shard.rows, "seconds": 0.0}
    extra = {META_KEY: config.embeddings} if config.embeddings else {}
    start = time.perf_counter()
    batches = shard_batches(root, name, shard, ["row_id", "image", "uri", "sha256"], config.chunk_rows)
    encode_batches(
        context, root, name, model_id, bits, batches, shard.rows, config, compute, extra, shard.part
    )
    record_shard(root, name, model_id, shard)
    seconds = time.perf_counter() - start
    context.log.info(
        f"shard {shard.index} of {name!r}: {shard.rows} rows in {seconds:.1f}s ({shard.rows / seconds:.0f} img/s)"
    )
    return {"index": shard.index, "rows": shard.rows, "seconds": seconds}


@dg.op(
    ins={"plan": dg.In(dict), "done": dg.In(list)},
    out=dg.Out(dg.Nothing),
    description="Make every shard's part live in one switch of parts.json.",
)
def commit_codes_shards(context: dg.OpExecutionContext, storage: StorageResource, plan: dict, done: list):
    name, root = context.partition_key, storage.get()
    model_id, bits, config = plan["model_id"], plan["bits"], ShardedCodesConfig(**plan["config"])
    shards = [Shard.from_dict(s) for s in plan["shards"]]
    extra = {"catalogue_fingerprint": plan["fingerprint"]} | (
        {META_KEY: config.embeddings} if config.embeddings else {}
    )
    commit_shards(root, name, model_id, shards, bits, extra)
    encoded = sum(d["rows"] for d in done)
    seconds = sum(d["seconds"] for d in done)
    ips = encoded / seconds if encoded and seconds > 0 else 0.0
    rows = plan["rows"]
    context.log.info(
        f"codes of {name!r} under {model_id}: {len(done)} of {len(shards)} shards encoded ({encoded} of {rows} rows)"
    )
    version = (
        context.assets_def.code_versions_by_key.get(context.asset_key) if context.has_assets_def else None
    )
    lineage = {"code_version": version, "dagster_run_id": context.run.run_id, "model_id": model_id}
    context.add_output_metadata(
        {
            "model_id": model_id,
            "dagster/uri": root.url(*codes_dir(name, model_id)),
            **table_metadata(codes_schema(bits), rows),
            "mode": "sharded" if done else "up-to-date",
            "encoded_rows": encoded,
            "reused_rows": rows - encoded,
            "dropped_rows": 0,
            "parts": len(shards),
            "shards": len(shards),
            "encoded_shards": len(done),
            "shard_rows": config.shard_rows,
            "bits": bits,
            "bytes_per_image": bits // 8 + _embedding_bytes(config.embeddings, bits),
            "embeddings": config.embeddings or "none",
            "encode_seconds": seconds,
            "encode_images_per_s": ips,
            "bytes": int(root.fs.du(root.path(*codes_dir(name, model_id)))),
            "lineage": dg.MetadataValue.json(lineage | {"catalogue_fingerprint": plan["fingerprint"]}),
        }
    )


def _config(values: dict) -> dict:
    return {"plan_codes_shards": {"config": values}}


@dg.graph_asset(
    name="packed_codes",
    partitions_def=catalogues,
    ins={"hashing_model": dg.AssetIn(dagster_type=dg.Nothing)},
    group_name="vitrieve",
    kinds={"parquet"},
    code_version=CODE_VERSION,
    automation_condition=FOLLOW_ACCEPTED_UPSTREAM,
    resource_defs={HANDOFF: handoff_io_manager().get_resource_definition()},
    config=dg.ConfigMapping(config_fn=_config, config_schema=ShardedCodesConfig.to_config_schema()),
    description="Packed codes of every catalogue image (row_id, code), encoded shard by shard (one step each).",
)
def packed_codes_sharded(hashing_model):
    plan, todo = plan_codes_shards(hashing_model)
    return commit_codes_shards(plan, todo.map(encode_codes_shard).collect())
