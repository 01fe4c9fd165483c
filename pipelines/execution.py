"""Materialise assets of one catalogue in-process against a persistent Dagster instance (used by the CLI),
so runs launched from the terminal show up in the Dagster UI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from assets.partitions import catalogues
from assets.resources import ComputeResource, DiagnosticsResource, StorageResource

# Pools `gpu` (training) and `duckdb_writer` take one step at a time; run monitoring frees the slots of
# cancelled or crashed runs (docs/OPERATIONS.md, "Checks, concurrency, staleness").
INSTANCE_YAML = """\
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 300
telemetry:
  enabled: false
"""


def dagster_home(root: str) -> str:
    """``$DAGSTER_HOME``, else ``<root>/dagster_home`` for a local root (``./.dagster_home`` for S3)."""
    home = os.environ.get("DAGSTER_HOME") or (
        os.path.join(root, "dagster_home") if "://" not in root else os.path.abspath(".dagster_home")
    )
    home = os.path.abspath(home)
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home, "dagster.yaml")
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = home
    return home


# In-process runs write their own terminal output (``pipelines.cli.run_output``): Dagster's capture of the
# process's stdout and stderr would swap the terminal for a file (no progress bars, a `tail` echoing it back).
NO_CAPTURE = {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}


def terminal_instance(root: str) -> dg.DagsterInstance:
    """The instance in ``dagster_home(root)`` (its event log, runs and schedules), without compute-log
    capture: the terminal stays the terminal for steps run in this process."""
    from dagster._core.instance.ref import InstanceRef  # the public API has no per-process override

    home = dagster_home(root)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides={"compute_logs": NO_CAPTURE}))


def materialise(
    catalogue: str,
    job_name: str,
    run_config: dict,
    root: str,
    db_path: str,
    device: str = "auto",
    selection: list[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    loggers: Mapping[str, dg.LoggerDefinition] | None = None,
    run_id: str | None = None,
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    """Run ``job_name`` (or just ``selection`` of its assets) for one catalogue partition; ``loggers`` replace
    the job's (Dagster's console logger) where given. The event log always goes to the instance."""
    from pipelines.definitions import build_definitions
    from pipelines.jobs import run_tags

    dagster_home(root)
    instance = instance or dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(catalogues.name, catalogue):
        instance.add_dynamic_partitions(catalogues.name, [catalogue])
    resources = {
        "storage": StorageResource(root=root),
        "diagnostics": DiagnosticsResource(path=db_path),
        "compute": ComputeResource(device=device),
    }
    job = build_definitions(resources).resolve_job_def(job_name)
    if loggers is not None:
        job = job.with_logger_defs(loggers)
    result = job.execute_in_process(
        run_id=run_id,
        run_config={"ops": run_config} | ({"loggers": dict.fromkeys(loggers, {})} if loggers else {}),
        instance=instance,
        partition_key=catalogue,
        asset_selection=[dg.AssetKey(a) for a in selection] if selection else None,
        tags=run_tags(instance, catalogue),
        raise_on_error=False,
    )
    return result, instance
