"""Declarative automation against a real instance: a model that passes its blocking checks reaches new codes and
a new published index with no schedule and no launch by hand; a model that fails one (``model_quality``, or a
comparison check with ERROR severity) reaches neither, and the last good index stays published."""

from __future__ import annotations

import copy
from datetime import timedelta

import dagster as dg
import pytest

from assets.common import latest_model_id
from bench.faults import TINY_OPS, catalogue_config
from pipelines.definitions import build_definitions
from storage.fs import StorageRoot
from storage.index import current
from tests.conftest import needs_fashion_mnist
from tests.tiny_graph import failure_messages, resources, run_graph

NAME = "fashion-mnist"
FOLLOWERS = {"packed_codes", "model_evaluation", "binary_index", "retrieval_diagnostics"}


class Daemon:
    """What the automation sensor does, one tick at a time: evaluate every automation condition (cursor kept
    between ticks), then execute the requested asset partitions as one run, with their checks."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def tick(self) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        graph = self.defs.resolve_asset_graph()
        requested = set()
        for key in graph.materializable_asset_keys:
            partitions = result.get_requested_partitions(key)
            assert partitions <= {NAME}, (key, partitions)
            if partitions:
                requested.add(key.path[-1])
        if requested:
            run = self.defs.resolve_job_def("train_and_publish").execute_in_process(
                run_config={"ops": {k: v for k, v in TINY_OPS.items() if k in requested}},
                instance=self.instance,
                partition_key=NAME,
                asset_selection=[dg.AssetKey(a) for a in requested],
                raise_on_error=False,
            )
            assert run.success, failure_messages(run)
        return requested

    def settle(self, rounds: int = 5) -> set[str]:
        """Tick until nothing is requested; every asset materialised on the way."""
        done: set[str] = set()
        for _ in range(rounds):
            requested = self.tick()
            if not requested:
                return done
            done |= requested
        raise AssertionError(f"automation still requesting after {rounds} ticks: {done}")


def train(instance, root: str, db: str, seed: int, **config) -> dg.ExecuteInProcessResult:
    ops = copy.deepcopy(TINY_OPS)
    ops["hashing_model"]["config"].update(seed=seed, **config)
    return run_graph(
        instance, NAME, catalogue_config("fresh"), root, db, selection=["hashing_model"], ops=ops
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


@needs_fashion_mnist
def test_automation_publishes_accepted_models_only(tmp_path, monkeypatch):
    from assets import drift_checks

    root, db = str(tmp_path / "data"), str(tmp_path / "diagnostics.duckdb")
    store = StorageRoot(root)
    with dg.instance_for_test() as instance:
        daemon = Daemon(build_definitions(resources(root, db)), instance)
        instance.add_dynamic_partitions("catalogues", [NAME])
        assert daemon.settle() == set()  # nothing upstream yet: nothing to follow

        # a new catalogue and a model that passes: codes, evaluation, index and diagnostics follow by themselves
        first = run_graph(instance, NAME, catalogue_config("fresh"), root, db, selection=["catalogue"])
        assert first.success, failure_messages(first)
        assert daemon.settle() == set()  # a catalogue alone trains nothing (hashing_model has no condition)
        good = train(instance, root, db, seed=0)
        assert good.success, failure_messages(good)
        assert all(e.passed for e in good.get_asset_check_evaluations())
        model_a = latest_model_id(instance, NAME)
        assert daemon.settle() == FOLLOWERS
        assert current(store, NAME)["model_id"] == model_a
        assert daemon.settle() == set()  # handled: not requested again

        # model_quality fails: neither codes nor index follow; the published index stays
        rejected = train(instance, root, db, seed=1, min_val_map=1.01)
        assert check_results(rejected)["model_quality"].passed is False
        assert daemon.settle() == set()
        assert current(store, NAME)["model_id"] == model_a
        assert latest_model_id(instance, NAME) == model_a

        # a comparison check fails with ERROR severity (limits made impossible): the run stops, nothing follows
        strict = drift_checks.Limit(-1.0, -1.0, "lower", 0, "any change is an error")
        with monkeypatch.context() as patch:
            patch.setitem(drift_checks.LIMITS, "map_regression", strict)
            regressed = train(instance, root, db, seed=2)
        assert not regressed.success
        check = check_results(regressed)["map_regression"]
        assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.ERROR)
        assert check.metadata["baseline_model_id"].value == model_a  # the rejected model is no baseline
        assert daemon.settle() == set()
        assert current(store, NAME)["model_id"] == model_a
        assert latest_model_id(instance, NAME) == model_a

        # the next model that passes is published, compared with the last accepted one
        better = train(instance, root, db, seed=3)
        assert better.success, failure_messages(better)
        model_d = latest_model_id(instance, NAME)
        assert model_d not in (model_a, None)
        assert check_results(better)["map_regression"].metadata["baseline_model_id"].value == model_a
        assert daemon.settle() == FOLLOWERS
        assert current(store, NAME)["model_id"] == model_d


def test_every_follower_waits_for_upstream_blocking_checks():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for name in FOLLOWERS:
        condition = graph.get(dg.AssetKey(name)).automation_condition
        labels = _labels(condition)
        assert {"eager", "all_deps_blocking_checks_passed"} <= labels, (name, labels)
    for name in ("catalogue", "hashing_model"):  # ingest and training are never started by a condition
        assert graph.get(dg.AssetKey(name)).automation_condition is None
    freshness = graph.get(dg.AssetKey("binary_index")).freshness_policy
    warn, fail = freshness.warn_window.to_timedelta(), freshness.fail_window.to_timedelta()
    assert timedelta(hours=24) < warn < fail  # a nightly index is fresh; one missed night warns first
    sensor = defs.resolve_sensor_def("automation_sensor")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # runs under `dagster dev`


def _labels(condition: dg.AutomationCondition) -> set[str]:
    out = {condition.get_label()} if condition.get_label() else set()
    for child in condition.children:
        out |= _labels(child)
    return out


@pytest.mark.parametrize("bad", ["-0.1", "2", "lots"])
def test_retrain_share_setting_is_checked(monkeypatch, bad):
    from pipelines.sensors import RETRAIN_SHARE, retrain_share

    assert retrain_share() == RETRAIN_SHARE
    monkeypatch.setenv("VITRIEVE_RETRAIN_SHARE", "0.5")
    assert retrain_share() == 0.5
    monkeypatch.setenv("VITRIEVE_RETRAIN_SHARE", bad)
    with pytest.raises(ValueError, match="VITRIEVE_RETRAIN_SHARE"):
        retrain_share()
