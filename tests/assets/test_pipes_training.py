"""``hashing_model`` with ``training: subprocess`` (Dagster Pipes, ``python -m assets.remote_training``) gives the
model, card, metadata, logs and diagnostics rows of the in-process training, seeded.

Left out of the comparisons, as they legitimately differ between two runs: the wall-clock figures
(``train_images_per_s``, ``inference_images_per_s``, the img/s and s columns of ``training_log``; in the card
also ``train_seconds``, ``created_at`` and each epoch's ``images_per_s`` / ``seconds``) and the run ids
(``lineage.dagster_run_id``, ``lineage.trained_in_run``, the card's ``dagster_run_id``), which must name each
run. Paths are equal: both runs write the same ``models/<model_id>`` (the second with ``force``).
"""

from __future__ import annotations

import dagster as dg

from bench.faults import TINY_OPS, catalogue_config
from storage.diagnostics import DiagnosticsDB
from storage.fs import StorageRoot
from storage.model_store import read_card
from tests.conftest import needs_fashion_mnist
from tests.tiny_graph import failure_messages, run_graph, tiny_catalogue_config

NAME = "fashion-mnist"
TIMINGS = {"train_images_per_s", "inference_images_per_s"}
RUN_IDS = {"dagster_run_id", "trained_in_run"}
CARD_ONLY_HERE = {
    "train_images_per_s",
    "inference_images_per_s",
    "train_seconds",
    "created_at",
    "dagster_run_id",
}


def model_ops(**config) -> dict:
    return {"hashing_model": {"config": {**TINY_OPS["hashing_model"]["config"], **config}}}


def materialization(result: dg.ExecuteInProcessResult) -> dict[str, dg.MetadataValue]:
    assert result.success, failure_messages(result)
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["hashing_model"]]
    return dict(event.materialization.metadata)


def log_columns(markdown: str, keep: int) -> list[list[str]]:
    """The first ``keep`` cells of each row of the ``training_log`` markdown table."""
    return [[c.strip() for c in line.strip("|").split("|")][:keep] for line in markdown.splitlines()]


def without_timings(card: dict) -> dict:
    out = {k: v for k, v in card.items() if k not in CARD_ONLY_HERE}
    out["history"] = [
        {k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in card["history"]
    ]
    return out


def epoch_rows(db: str, run_id: str) -> list[tuple]:
    _, rows = DiagnosticsDB(db).query(
        "SELECT t.epoch, t.loss, t.lr, t.val_map FROM training_log t JOIN runs r USING (run_id) "
        "WHERE r.dagster_run_id = ? ORDER BY t.epoch",
        [run_id],
    )
    return rows


def messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


@needs_fashion_mnist
def test_pipes_training_matches_in_process_training(tmp_path):
    root, db = str(tmp_path / "data"), str(tmp_path / "diagnostics.duckdb")
    store = StorageRoot(root)
    with dg.instance_for_test() as instance:
        assert run_graph(instance, NAME, catalogue_config("fresh"), root, db, selection=["catalogue"]).success

        local = run_graph(instance, NAME, {}, root, db, selection=["hashing_model"], ops=model_ops())
        local_meta = materialization(local)
        model_id = local_meta["model_id"].value
        local_card = read_card(store, model_id)

        remote = run_graph(
            instance,
            NAME,
            {},
            root,
            db,
            selection=["hashing_model"],
            ops=model_ops(training="subprocess", force=True),
        )
        remote_meta = materialization(remote)
        remote_card = read_card(store, model_id)

        # the same model: id, weights (bytes, sha256), metrics and card
        assert remote_meta["model_id"].value == model_id
        assert remote_meta.keys() == local_meta.keys()
        plain = remote_meta.keys() - TIMINGS - {"lineage", "training_log"}
        assert {k: remote_meta[k] for k in plain} == {k: local_meta[k] for k in plain}
        assert remote_meta["reused"].value is False
        for key in TIMINGS:
            assert type(remote_meta[key]) is type(local_meta[key]) and remote_meta[key].value > 0
        lineage = {run: meta["lineage"].data for run, meta in ((local, local_meta), (remote, remote_meta))}
        for run, facts in lineage.items():
            assert facts["dagster_run_id"] == facts["trained_in_run"] == run.run_id
        assert {k: v for k, v in lineage[remote].items() if k not in RUN_IDS} == {
            k: v for k, v in lineage[local].items() if k not in RUN_IDS
        }
        assert type(remote_meta["training_log"]) is type(local_meta["training_log"])
        local_log, remote_log = (log_columns(m["training_log"].value, 3) for m in (local_meta, remote_meta))
        assert remote_log == local_log and len(remote_log) == 2 + len(local_card["history"])
        assert without_timings(remote_card) == without_timings(local_card)
        assert remote_card["dagster_run_id"] == remote.run_id != local_card["dagster_run_id"]

        # the Pipes process's log lines reach the run's log; its epoch rows reach the diagnostics DB
        remote_logs = messages(instance, remote.run_id)
        assert any(m.startswith("training") and "Pipes subprocess" in m for m in remote_logs)
        assert any(m.startswith(f"training {model_id} on cpu: ") for m in remote_logs)
        assert any(m.startswith("epoch 1/1: loss ") for m in remote_logs)
        assert not any("Pipes subprocess" in m for m in messages(instance, local.run_id))
        assert epoch_rows(db, remote.run_id) == epoch_rows(db, local.run_id) != []

        # a model already stored is reused without starting a process
        again = run_graph(
            instance, NAME, {}, root, db, selection=["hashing_model"], ops=model_ops(training="subprocess")
        )
        again_meta = materialization(again)
        assert again_meta["model_id"].value == model_id and again_meta["reused"].value is True
        assert not any("Pipes subprocess" in m for m in messages(instance, again.run_id))


def test_pipes_training_on_s3_takes_the_storage_options_and_keeps_credentials_out(tmp_path, monkeypatch):
    """The Pipes process reaches an S3 root through the storage resource's fsspec options alone (the endpoint
    is in no AWS variable), and the planted credentials it gets appear in no event or run record."""
    from tests.catalogue_factory import write_folder
    from tests.s3_server import moto_s3, new_bucket

    planted = {"VITRIEVE_TEST_S3_KEY": "AKIAPLANTEDPIPES7Q3", "VITRIEVE_TEST_S3_SECRET": "planted-pipes-9c2d"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    with moto_s3() as url, dg.instance_for_test() as instance:
        fs = new_bucket("pipes-images")  # buckets outlive moto servers in one process: unique names
        fs.put(str(write_folder(tmp_path / "pets", per_class=10)), "pipes-images/pets", recursive=True)
        fs.mkdir("pipes-models")
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        root = "s3://pipes-models/prod"
        result = run_graph(
            instance,
            "pets",
            tiny_catalogue_config("s3://pipes-images/pets"),
            root,
            str(tmp_path / "diagnostics.duckdb"),
            selection=["catalogue", "hashing_model"],
            ops=model_ops(training="subprocess"),
            fsspec_options={"s3": {"endpoint_url": url}},
            s3_key=dg.EnvVar("VITRIEVE_TEST_S3_KEY"),
            s3_secret=dg.EnvVar("VITRIEVE_TEST_S3_SECRET"),
        )
        meta = materialization(result)
        model_id = meta["model_id"].value
        assert meta["dagster/uri"].value == f"{root}/models/{model_id}/model.safetensors"
        assert any(m.startswith(f"training {model_id} on cpu: ") for m in messages(instance, result.run_id))
        stored = fs.find(f"pipes-models/prod/models/{model_id}")
        assert sorted(k.rsplit("/", 1)[1] for k in stored) == ["model.json", "model.safetensors"]
        records = "\n".join(dg.serialize_value(e) for e in instance.all_logs(result.run_id))
        records += dg.serialize_value(instance.get_run_by_id(result.run_id))
        assert [v for v in planted.values() if v in records] == []


@needs_fashion_mnist
def test_a_failing_pipes_process_fails_the_step_with_its_reason(tmp_path):
    root, db = str(tmp_path / "data"), str(tmp_path / "diagnostics.duckdb")
    with dg.instance_for_test() as instance:
        assert run_graph(instance, NAME, catalogue_config("fresh"), root, db, selection=["catalogue"]).success
        failed = run_graph(
            instance,
            NAME,
            {},
            root,
            db,
            selection=["hashing_model"],
            ops=model_ops(training="subprocess", pretrained="weights.txt"),
        )
        assert not failed.success
        (message,) = failure_messages(failed)
        assert (
            "in a Pipes process failed: ValueError: pretrained weights 'weights.txt': expected a" in message
        )
        _, status = DiagnosticsDB(db).query(
            "SELECT status FROM runs WHERE dagster_run_id = ?", [failed.run_id]
        )
        assert status == [("failed",)]
