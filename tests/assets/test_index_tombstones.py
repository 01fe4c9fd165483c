"""The ``binary_index`` asset compacts the tombstones: deleted rows leave the index (removed in place for a
removable kind), updated codes are merged in, and the tombstones then name the published index."""

from __future__ import annotations

import dagster as dg
import numpy as np

from storage.index import current, delete_rows, load_index, read_tombstones, update_rows
from tests.storage.test_index_tombstones import store  # noqa: F401  (the fixture)


def _index(root, instance, kind: str) -> dict:
    from assets.checks import index_consistent
    from assets.index import binary_index
    from assets.resources import StorageResource

    result = dg.materialize(
        [binary_index, index_consistent],
        partition_key="cat",
        instance=instance,
        resources={"storage": StorageResource(root=root.uri)},
        run_config={"ops": {"binary_index": {"config": {"model_id": "m1", "kind": kind}}}},
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True], [dict(c.metadata) for c in checks]
    event = result.get_asset_materialization_events()[0]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_the_reindex_compacts_deletes_and_updates(store):  # noqa: F811
    root, _, _, db_rows, db_codes = store
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["cat"])
        assert _index(root, instance, "flat")["mode"] == "rebuild"
        gone, changed = db_rows[:6], db_rows[10:12]
        delete_rows(root, "cat", gone)
        update_rows(root, "cat", changed, ~db_codes[10:12])
        md = _index(root, instance, "")  # the nightly run: kind left empty keeps flat
        assert md["mode"] == "incremental" and md["removed_rows"] == len(gone) + len(changed)
        assert md["added_rows"] == len(changed) and md["published"]
        index, manifest = load_index(root, "cat")
        assert index.ntotal == len(db_rows) - len(gone) and not np.isin(index.ids(), gone).any()
        stones = read_tombstones(root, "cat")
        assert stones.index_sha256 == manifest.sha256 == current(root, "cat")["sha256"]
        assert len(stones.pending) == 0 and np.array_equal(stones.deleted, gone)
        md = _index(root, instance, "")
        assert md["mode"] == "unchanged" and not md["published"]
        delete_rows(root, "cat", db_rows[20:22])  # pending deletes: the published index still holds them
        update_rows(root, "cat", db_rows[30:31], ~db_codes[30:31])
        assert _index(root, instance, "")["mode"] == "incremental"
