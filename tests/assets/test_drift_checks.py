"""Comparison checks' measures and verdicts against brute-force references; the changed-row share of a catalogue
and the retraining sensor that reads it."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from assets.catalogue import changed_row_share
from assets.drift_checks import LIMITS, Limit, Measure, code_stats, judge


def test_code_stats_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    bits = 12  # not a multiple of 8: the padding bits of the second byte are not counted
    codes = np.packbits(rng.random((300, bits)) < 0.3, axis=1)
    codes = np.vstack([codes, codes[:30]])  # 30 rows repeat an earlier code
    stats = code_stats(codes, bits)
    as_bits = [[(int.from_bytes(row.tobytes(), "big") >> (15 - b)) & 1 for b in range(bits)] for row in codes]
    ones = [sum(r[b] for r in as_bits) / len(codes) for b in range(bits)]
    assert stats["bit_balance_drift"] == pytest.approx(sum(abs(o - 0.5) for o in ones) / bits)
    distinct = len({row.tobytes() for row in codes})
    assert stats["collision_rate"] == pytest.approx(1 - distinct / len(codes))
    assert distinct <= 300
    assert code_stats(np.zeros((0, 2), np.uint8), bits) == {"bit_balance_drift": 0.0, "collision_rate": 0.0}


@pytest.mark.parametrize(
    ("name", "value", "previous", "expected"),
    [
        ("map_regression", 0.70, 0.71, (True, "WARN")),  # a drop of 0.01: within limits
        ("map_regression", 0.68, 0.71, (False, "WARN")),  # 0.03 > warn 0.02
        ("map_regression", 0.60, 0.71, (False, "ERROR")),  # 0.11 > error 0.05
        ("map_regression", 0.90, 0.71, (True, "WARN")),  # better
        ("collision_rate", 0.03, 0.01, (False, "WARN")),  # a rise of 0.02 > warn 0.01
        ("collision_rate", 0.10, 0.01, (False, "ERROR")),
        ("bit_balance_drift", 0.05, 0.04, (True, "WARN")),
        ("bit_balance_drift", 0.02, 0.09, (True, "WARN")),  # better balanced
    ],
)
def test_judge_applies_the_declared_limits(name, value, previous, expected):
    samples = LIMITS[name].min_samples
    passed, severity, change, _ = judge(name, Measure(value, "m", samples), previous, samples)
    assert (passed, severity.value) == expected
    worse = previous - value if LIMITS[name].worse == "lower" else value - previous
    assert change == pytest.approx(worse)


def test_judge_needs_a_baseline_and_enough_samples():
    limit = LIMITS["map_regression"]
    now = Measure(0.1, "m", limit.min_samples)
    assert judge("map_regression", now, None)[0] is True
    passed, _, _, verdict = judge("map_regression", now, 0.9, limit.min_samples - 1)
    assert passed and "not judged" in verdict
    assert judge("map_regression", now, 0.9, limit.min_samples)[:2] == (False, dg.AssetCheckSeverity.ERROR)


def test_limits_are_ordered():
    for name, limit in LIMITS.items():
        assert isinstance(limit, Limit) and 0 < limit.warn < limit.error, name
        assert limit.worse in ("lower", "higher") and limit.min_samples > 0, name


SHA256 = pa.binary(32)


def _rows(pairs: dict[int, bytes], sha_type: pa.DataType = SHA256) -> pa.Table:
    return pa.table(
        {
            "row_id": pa.array(list(pairs), pa.int64()),
            "sha256": pa.array([v.ljust(32, b"\0") for v in pairs.values()], sha_type),
        }
    )


def test_changed_row_share_counts_added_removed_and_changed_rows():
    before = {1: b"a", 2: b"b", 3: b"c", 4: b"d"}
    after = {3: b"c", 2: b"B", 1: b"a", 5: b"e"}  # 2 changed, 4 removed, 5 added; unordered
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed_row_share(_rows(before), _rows(after)) == len(changed) / len(before) == 0.75
    assert changed_row_share(_rows(before), _rows(before)) == 0.0
    assert changed_row_share(None, _rows(after)) == 1.0
    # a freshly ingested table holds its digests as variable-length binary until it is written
    assert changed_row_share(_rows(before), _rows(after, pa.binary())) == 0.75


def _catalogue_event(instance, name: str, share: float) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("catalogue", partition=name, metadata={"changed_row_share": share})
    )


def test_retrain_sensor_requests_a_model_when_enough_rows_changed(monkeypatch):
    from pipelines.sensors import RETRAIN_SHARE, retrain_on_catalogue_change

    def tick(instance, cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor) as ctx:
            return retrain_on_catalogue_change(ctx)

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["shoes", "bags"])
        assert isinstance(tick(instance, None), dg.SkipReason)
        _catalogue_event(instance, "shoes", RETRAIN_SHARE + 0.01)
        _catalogue_event(instance, "bags", RETRAIN_SHARE)  # not more than the share: no retraining
        result = tick(instance, None)
        [request] = result.run_requests
        assert (request.job_name, request.partition_key) == ("retrain_model", "shoes")
        assert request.tags["vitrieve/catalogue"] == "shoes"
        assert isinstance(tick(instance, result.cursor), dg.SkipReason)  # seen: not requested again
        monkeypatch.setenv("VITRIEVE_RETRAIN_SHARE", "0.05")
        _catalogue_event(instance, "bags", 0.1)
        later = tick(instance, result.cursor)
        assert [r.partition_key for r in later.run_requests] == ["bags"]


def test_retrain_sensor_skips_runs_that_trained_already():
    from assets.partitions import catalogues
    from pipelines.sensors import retrain_on_catalogue_change

    @dg.asset(name="catalogue", partitions_def=catalogues)
    def fake_catalogue() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"changed_row_share": 1.0})

    @dg.asset(name="hashing_model", partitions_def=catalogues, deps=["catalogue"])
    def fake_model() -> None:
        return None

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["shoes", "bags"])
        both = dg.materialize([fake_catalogue, fake_model], instance=instance, partition_key="shoes")
        alone = dg.materialize(
            [fake_catalogue, fake_model], instance=instance, partition_key="bags", selection=["catalogue"]
        )
        assert both.success and alone.success
        with dg.build_sensor_context(instance=instance) as ctx:
            result = retrain_on_catalogue_change(ctx)
        assert [r.partition_key for r in result.run_requests] == ["bags"]  # "shoes" was trained in its run
