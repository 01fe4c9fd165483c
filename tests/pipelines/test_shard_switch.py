"""``VITRIEVE_SHARD_ROWS`` alone switches ``packed_codes`` to one step per shard; same key, checks and jobs."""

from __future__ import annotations

import pytest


def test_shard_rows_serve_the_sharded_packed_codes(monkeypatch):
    from assets.codes_shards import SHARD_ROWS_ENV, shard_rows_from_env
    from pipelines.definitions import build_definitions

    monkeypatch.delenv(SHARD_ROWS_ENV, raising=False)
    one = build_definitions().resolve_assets_def("packed_codes")
    assert one.node_def.name == "packed_codes" and not hasattr(one.node_def, "node_dict")
    monkeypatch.setenv(SHARD_ROWS_ENV, "4096")
    assert shard_rows_from_env() == 4096
    defs = build_definitions()
    sharded = defs.resolve_assets_def("packed_codes")
    assert set(sharded.node_def.node_dict) == {
        "plan_codes_shards",
        "encode_codes_shard",
        "commit_codes_shards",
    }
    assert sharded.dependency_keys == one.dependency_keys and sharded.partitions_def == one.partitions_def
    nightly = defs.resolve_job_def("nightly_reindex")
    assert {"packed_codes_codes_complete", "packed_codes"} <= set(nightly.graph.node_dict)
    for bad in ("0", "-5", "many"):
        monkeypatch.setenv(SHARD_ROWS_ENV, bad)
        with pytest.raises(ValueError, match=f"{SHARD_ROWS_ENV}={bad!r}"):
            shard_rows_from_env()
