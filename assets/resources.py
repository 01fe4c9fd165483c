"""Dagster resources: storage root, diagnostics DB and compute device (defaults: the embedded set-up)."""

from __future__ import annotations

import json
import os

import dagster as dg
import fsspec.config
from pydantic import Field, PrivateAttr

from storage.diagnostics import DiagnosticsDB
from storage.fs import StorageRoot

DEFAULT_ROOT = "./data"


def default_root() -> str:
    return os.environ.get("VITRIEVE_ROOT", DEFAULT_ROOT)


def diagnostics_path(root: str | None = None, db: str | None = None) -> str:
    """Where the diagnostics DuckDB lives: ``db`` if given, else ``$VITRIEVE_DB``, else ``diagnostics.duckdb``
    under a local ``root`` (None = ``default_root()``), else ``./diagnostics.duckdb`` (a remote root)."""
    if db:
        return db
    if "VITRIEVE_DB" in os.environ:
        return os.environ["VITRIEVE_DB"]
    root = root or default_root()
    return os.path.join(root, "diagnostics.duckdb") if "://" not in root else "./diagnostics.duckdb"


def default_db() -> str:
    return diagnostics_path()


# Environment variables ``default_resources`` reads S3 credentials from, as ``dg.EnvVar``s: Dagster stores their
# names, never their values (nor does vitrieve: no run config, metadata, log line or DuckDB row holds them).
S3_KEY_ENV, S3_SECRET_ENV = "VITRIEVE_S3_KEY", "VITRIEVE_S3_SECRET"


class StorageResource(dg.ConfigurableResource):
    """Root URI of catalogues, models, codes and indexes: a local path or ``s3://bucket/prefix``
    (credentials, region and endpoint come from the usual AWS environment variables, ``s3_key`` / ``s3_secret``
    or ``fsspec_options``)."""

    root: str = DEFAULT_ROOT
    fsspec_options: dict = Field(
        default_factory=dict,
        description="fsspec options per protocol for every file this run "
        "touches (storage root, sources, images), e.g. {s3: {endpoint_url: ..., client_kwargs: "
        "{region_name: ...}}}; keep secrets in env vars",
    )
    s3_key: str | None = Field(
        default=None, description=f"S3 access key id: give it as dg.EnvVar (e.g. {S3_KEY_ENV}), never as text"
    )
    s3_secret: str | None = Field(
        default=None,
        description=f"S3 secret access key: give it as dg.EnvVar (e.g. {S3_SECRET_ENV}), never as text",
    )
    _saved: dict = PrivateAttr(default_factory=dict)

    def _options(self) -> dict[str, dict]:
        """``fsspec_options`` with the S3 credentials merged in (kept in memory only)."""
        options = {protocol: dict(o) for protocol, o in self.fsspec_options.items()}
        credentials = {k: v for k, v in (("key", self.s3_key), ("secret", self.s3_secret)) if v}
        if credentials:
            options["s3"] = {**options.get("s3", {}), **credentials}
        return options

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Merge the fsspec options into fsspec's process-wide config for the run (undone at teardown)."""
        options = self._options()
        self._saved = {p: fsspec.config.conf.get(p) for p in options}
        for protocol, values in options.items():
            fsspec.config.conf[protocol] = {**(fsspec.config.conf.get(protocol) or {}), **values}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for protocol, options in self._saved.items():
            if options is None:
                fsspec.config.conf.pop(protocol, None)
            else:
                fsspec.config.conf[protocol] = options

    def get(self) -> StorageRoot:
        return StorageRoot(self.root)

    def process_env(self) -> dict[str, str]:
        """Environment variables that give a child process these fsspec options, credentials included: fsspec
        reads ``FSSPEC_<PROTOCOL>`` (JSON) when imported. Only for the environment of a process, never to log."""
        return {f"FSSPEC_{protocol.upper()}": json.dumps(opts) for protocol, opts in self._options().items()}


class DiagnosticsResource(dg.ConfigurableResource):
    """Local DuckDB file holding metrics, curves, bit stats, latencies and training logs."""

    path: str = os.path.join(DEFAULT_ROOT, "diagnostics.duckdb")

    def get(self) -> DiagnosticsDB:
        return DiagnosticsDB(self.path)


class ComputeResource(dg.ConfigurableResource):
    """Where torch runs: ``auto`` picks CUDA when present; ``threads`` 0 = all cores of the process."""

    device: str = "auto"
    threads: int = 0

    def torch_device(self):
        from ml.device import configure_threads, resolve_device

        configure_threads(self.threads or None)
        return resolve_device(self.device)


class SourceWatchResource(dg.ConfigurableResource):
    """Source URI watched by ``catalogue_source_sensor`` (local folder or ``s3://`` prefix; one catalogue per
    child folder); empty = nothing watched."""

    uri: str = ""


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The embedded default: local files under ``VITRIEVE_ROOT`` (./data) and a local DuckDB file; S3
    credentials from ``VITRIEVE_S3_KEY`` / ``VITRIEVE_S3_SECRET`` when set (else the AWS environment)."""
    return {
        "storage": StorageResource(
            root=default_root(),
            **{
                field: dg.EnvVar(name)
                for field, name in (("s3_key", S3_KEY_ENV), ("s3_secret", S3_SECRET_ENV))
                if os.environ.get(name)
            },
        ),
        "diagnostics": DiagnosticsResource(path=default_db()),
        "compute": ComputeResource(device=os.environ.get("VITRIEVE_DEVICE", "auto")),
        "source_watch": SourceWatchResource(uri=os.environ.get("VITRIEVE_WATCH", "")),
    }
