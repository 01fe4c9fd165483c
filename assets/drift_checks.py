"""Comparison checks: each new model, its codes and its evaluation against the previous accepted ones.

Every check records ``value`` (this materialisation) and, when there is one, ``baseline`` (the value recorded
by the same check for the catalogue's previous accepted materialisation: the latest earlier evaluation of the
check, in another run, in which no blocking check of the asset failed with ERROR severity). The change is
judged against ``LIMITS``, declared once below: beyond ``warn`` the check fails with WARN severity, beyond
``error`` with ERROR severity; under ``min_samples`` a change is not judged. Every check is blocking: an ERROR on
``hashing_model`` or ``packed_codes`` stops the run before the index is rebuilt (the last good index stays
published), and any failure holds declarative automation of the assets downstream until a person looks
(docs/OPERATIONS.md, "Automation and comparison checks").
"""

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow.compute as pc
from dagster._core.event_api import PartitionKeyFilter  # no public name in dagster 1.13

from assets.codes import packed_codes
from assets.evaluation import model_evaluation
from assets.index import database_codes
from assets.model import hashing_model
from assets.partitions import catalogues
from assets.resources import StorageResource
from storage.catalogue import read_catalogue
from storage.fs import StorageRoot
from storage.model_store import read_card


@dataclass(frozen=True)
class Limit:
    """How much a measure may worsen against its baseline: beyond ``warn`` -> WARN, beyond ``error`` -> ERROR.
    Below ``min_samples`` (queries or database rows) on either side, a change is noise and is not judged."""

    warn: float
    error: float
    worse: str  # "lower" (a drop is worse) or "higher" (a rise is worse)
    min_samples: int
    about: str


#: Every threshold of the comparison checks (absolute changes of the measure, in its own unit).
LIMITS: dict[str, Limit] = {
    "map_regression": Limit(
        warn=0.02,
        error=0.05,
        worse="lower",
        min_samples=200,
        about="validation mAP@100 of the new model (its model card; samples: the validation slice)",
    ),
    "eval_map_regression": Limit(
        warn=0.02,
        error=0.05,
        worse="lower",
        min_samples=200,
        about="mAP@100 of the protocol's queries (model_evaluation; samples: the queries)",
    ),
    "bit_balance_drift": Limit(
        warn=0.02,
        error=0.05,
        worse="higher",
        min_samples=2000,
        about="mean over bits of |ones rate - 0.5| of the database codes",
    ),
    "collision_rate": Limit(
        warn=0.01,
        error=0.05,
        worse="higher",
        min_samples=2000,
        about="share of database rows whose code another row also has (1 - unique codes / rows)",
    ),
    "copy_recall_drop": Limit(
        warn=0.02,
        error=0.05,
        worse="lower",
        min_samples=500,
        about="copy recall@1 (expected rank under ties) of the copies protocol (model_evaluation with "
        "copy_protocol; samples: the copies)",
    ),
}


@dataclass(frozen=True)
class Measure:
    # None: not measured by this materialisation (nothing to judge, no baseline for later)
    value: float | None
    model_id: str
    samples: int  # queries or database rows the value is measured on


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    """Metadata (raw values) of the latest materialisation of ``asset`` for ``partition``."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records:
        raise ValueError(f"{asset} of catalogue {partition!r} has no materialisation to check")
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def code_stats(codes: np.ndarray, bits: int) -> dict[str, float]:
    """Bit balance (mean |ones rate - 0.5|) and collision rate (1 - unique codes / rows) of packed codes."""
    if len(codes) == 0:
        return {"bit_balance_drift": 0.0, "collision_rate": 0.0}
    ones = np.unpackbits(codes, axis=1)[:, :bits].mean(axis=0, dtype=np.float64)
    unique = len(np.unique(codes, axis=0))
    return {
        "bit_balance_drift": float(np.abs(ones - 0.5).mean()),
        "collision_rate": 1.0 - unique / len(codes),
    }


def _validation_map(context, root: StorageRoot) -> Measure:
    model_id = latest_metadata(context.instance, "hashing_model", context.partition_key)["model_id"]
    table, _ = read_catalogue(root, context.partition_key, columns=["in_validation"])
    validation = int(pc.sum(table["in_validation"]).as_py() or 0)
    return Measure(float(read_card(root, model_id)["best_val_map_at_100"]), model_id, validation)


def _evaluation_map(context, root: StorageRoot) -> Measure:
    meta = latest_metadata(context.instance, "model_evaluation", context.partition_key)
    return Measure(float(meta["map_at_100"]), meta["model_id"], int(meta["protocol"]["queries"]))


def _copy_recall(context, root: StorageRoot) -> Measure:
    meta = latest_metadata(context.instance, "model_evaluation", context.partition_key)
    value = meta.get("copy_recall_at_1_expected")
    copies = int(meta["protocol"].get("copies", {}).get("queries", 0))
    return Measure(None if value is None else float(value), meta["model_id"], copies)


def _code_measure(name: str) -> Callable[..., Measure]:
    def measure(context, root: StorageRoot) -> Measure:
        model_id = latest_metadata(context.instance, "packed_codes", context.partition_key)["model_id"]
        _, codes, bits = database_codes(root, context.partition_key, model_id)
        return Measure(code_stats(codes, bits)[name], model_id, len(codes))

    return measure


#: check name -> (the asset it checks, how its value is measured)
MEASURES: dict[str, tuple[dg.AssetsDefinition, Callable[..., Measure]]] = {
    "map_regression": (hashing_model, _validation_map),
    "eval_map_regression": (model_evaluation, _evaluation_map),
    "copy_recall_drop": (model_evaluation, _copy_recall),
    "bit_balance_drift": (packed_codes, _code_measure("bit_balance_drift")),
    "collision_rate": (packed_codes, _code_measure("collision_rate")),
}


def _evaluation(record) -> dg.AssetCheckEvaluation | None:
    """The evaluation of a check execution record (None while it is only planned)."""
    event = record.event.dagster_event if record.event else None
    data = event.event_specific_data if event is not None else None
    return data if isinstance(data, dg.AssetCheckEvaluation) else None


def rejected_runs(
    instance: dg.DagsterInstance, check_keys: list[dg.AssetCheckKey], partition: str
) -> set[str]:
    """Runs in which one of ``check_keys`` failed with ERROR severity for ``partition``."""
    rejected = set()
    for key in check_keys:
        for record in instance.event_log_storage.get_asset_check_execution_history(
            key, limit=1000, partition_filter=PartitionKeyFilter(key=partition)
        ):
            evaluation = _evaluation(record)
            if (
                evaluation is not None
                and not evaluation.passed
                and evaluation.severity == dg.AssetCheckSeverity.ERROR
            ):
                rejected.add(record.run_id)
    return rejected


def baseline(context: dg.AssetCheckExecutionContext, key: dg.AssetCheckKey) -> dict | None:
    """Metadata of the latest earlier evaluation of ``key`` for this catalogue, from another run in which no
    blocking check of the same asset failed with ERROR severity; None if there is none."""
    graph = context.job_def.asset_layer.asset_graph
    siblings = [k for k in graph.asset_check_keys if k.asset_key == key.asset_key]
    partition = context.partition_key
    rejected = rejected_runs(context.instance, siblings, partition)
    for record in context.instance.event_log_storage.get_asset_check_execution_history(
        key, limit=100, partition_filter=PartitionKeyFilter(key=partition)
    ):
        evaluation = _evaluation(record)
        if record.run_id == context.run.run_id or record.run_id in rejected or evaluation is None:
            continue
        meta = {k: v.value for k, v in evaluation.metadata.items()}
        if "value" in meta:
            return meta
    return None


def judge(
    name: str, now: Measure, previous: float | None, previous_samples: int = 0
) -> tuple[bool, dg.AssetCheckSeverity, float, str]:
    """(passed, severity, change, verdict): the change is positive when the measure got worse."""
    limit = LIMITS[name]
    if previous is None:
        return True, dg.AssetCheckSeverity.WARN, 0.0, "no baseline: the first accepted value"
    if min(now.samples, previous_samples) < limit.min_samples:
        return True, dg.AssetCheckSeverity.WARN, 0.0, f"not judged: under {limit.min_samples} samples"
    value = now.value
    change = (previous - value) if limit.worse == "lower" else (value - previous)
    if change > limit.error:
        return False, dg.AssetCheckSeverity.ERROR, change, f"worse by more than {limit.error}"
    if change > limit.warn:
        return False, dg.AssetCheckSeverity.WARN, change, f"worse by more than {limit.warn}"
    return True, dg.AssetCheckSeverity.WARN, change, "within limits"


def _comparison_check(name: str) -> dg.AssetChecksDefinition:
    asset, measure = MEASURES[name]
    limit = LIMITS[name]
    direction = "drop" if limit.worse == "lower" else "rise"

    @dg.asset_check(
        asset=asset,
        name=name,
        blocking=True,
        partitions_def=catalogues,
        description=f"{limit.about}, against the catalogue's previous accepted value: a {direction} beyond "
        f"{limit.warn} warns, beyond {limit.error} is an error (judged from {limit.min_samples} samples on).",
    )
    def _check(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
        key = dg.AssetCheckKey(asset.key, name)
        now = measure(context, storage.get())
        # recorded without a value, so a later evaluation never takes it as its baseline
        if now.value is None:
            return dg.AssetCheckResult(
                passed=True,
                metadata={"model_id": now.model_id, "verdict": "not measured by this materialisation"},
            )
        before = baseline(context, key)
        previous = float(before["value"]) if before else None
        passed, severity, change, verdict = judge(
            name, now, previous, int(before.get("samples", 0)) if before else 0
        )
        return dg.AssetCheckResult(
            passed=passed,
            severity=severity,
            metadata={
                "value": now.value,
                "model_id": now.model_id,
                "samples": now.samples,
                "verdict": verdict,
                "baseline": previous if previous is not None else "none",
                "baseline_model_id": before["model_id"] if before else "none",
                direction: change,
                "warn_above": limit.warn,
                "error_above": limit.error,
            },
        )

    return _check


map_regression = _comparison_check("map_regression")
eval_map_regression = _comparison_check("eval_map_regression")
bit_balance_drift = _comparison_check("bit_balance_drift")
collision_rate = _comparison_check("collision_rate")
copy_recall_drop = _comparison_check("copy_recall_drop")
