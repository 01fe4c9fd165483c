"""The source-watching sensor, evaluated against a real instance: local folders and an S3 prefix (moto)."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest

from assets.resources import SourceWatchResource
from pipelines.sensors import catalogue_source_sensor
from tests.ops_support import moto_s3


def _tick(instance, uri: str, cursor: str | None):
    resources = {"source_watch": SourceWatchResource(uri=uri)}
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources
    ) as ctx:  # closed before the instance
        result = catalogue_source_sensor(ctx)
    for request in getattr(result, "dynamic_partitions_requests", None) or []:  # what the daemon does
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _exercise(instance, uri: str, write) -> None:
    assert isinstance(_tick(instance, uri, None), dg.SkipReason)  # nothing there yet
    write("shoes/train-images.bin", b"a")
    write(".incoming/partial.bin", b"x")  # hidden folders are ignored
    result = _tick(instance, uri, None)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests
    assert (request.job_name, request.partition_key) == ("train_and_publish", "shoes")
    assert request.tags["vitrieve/catalogue"] == "shoes" and "vitrieve/model" not in request.tags
    assert request.run_config["ops"]["catalogue"]["config"]["source"].rstrip("/").endswith("shoes")
    assert instance.get_dynamic_partitions("catalogues") == ["shoes"]
    cursor = result.cursor
    assert isinstance(_tick(instance, uri, cursor), dg.SkipReason)  # unchanged listing: skip

    # a trained catalogue whose source gains files: ingest + reindex, tagged with its model
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "hashing_model", partition="shoes", metadata={"model_id": "vts-csq-64b-small-abc"}
        )
    )
    write("shoes/more-images.bin", b"b")
    write("bags/labels.csv", b"c")
    result = _tick(instance, uri, cursor)
    jobs = {r.partition_key: (r.job_name, r.tags.get("vitrieve/model")) for r in result.run_requests}
    assert jobs == {
        "shoes": ("ingest_and_reindex", "vts-csq-64b-small-abc"),
        "bags": ("train_and_publish", None),
    }
    assert len({r.run_key for r in result.run_requests}) == 2
    assert sorted(instance.get_dynamic_partitions("catalogues")) == ["bags", "shoes"]
    assert set(json.loads(result.cursor)) == {"shoes", "bags"}
    assert isinstance(_tick(instance, uri, result.cursor), dg.SkipReason)


def test_sensor_without_source_skips():
    with dg.instance_for_test() as instance:
        assert isinstance(_tick(instance, "", None), dg.SkipReason)


def test_sensor_watches_local_folder(tmp_path):
    src = tmp_path / "sources"

    def write(rel: str, data: bytes) -> None:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)

    with dg.instance_for_test() as instance:
        _exercise(instance, str(src), write)


def test_sensor_watches_s3_prefix(tmp_path, monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    with moto_s3(str(tmp_path)) as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)

        def write(rel: str, data: bytes) -> None:
            fs.pipe(f"vitrieve/sources/{rel}", data)
            fs.invalidate_cache()

        with dg.instance_for_test() as instance:
            _exercise(instance, "s3://vitrieve/sources", write)
    assert os.path.exists(tmp_path / "moto.log")
