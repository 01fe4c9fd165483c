"""Dagster Pipes entry point of ``hashing_model``'s training: ``python -m assets.remote_training``.

``hashing_model`` with ``training: subprocess`` starts it through ``dg.PipesSubprocessClient``; the same command
runs in a GPU pod (``PipesK8sClient``) or on Databricks (``--databricks``): docs/OPERATIONS.md, "Training off the
orchestrator". It takes the planned run from the Pipes extras, trains with ``assets.training.train_and_store`` (the
function the in-process path calls), sends its log lines through the Pipes log and each epoch's row as a custom
message, and reports the materialisation with ``card_metadata``, as the in-process path does.

Layering: this is the one module that imports ``dagster_pipes`` (the protocol's light package); neither it nor
anything it imports imports ``dagster``, so a training image needs no orchestrator (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import sys

from dagster_pipes import PipesDbfsContextLoader, PipesDbfsMessageWriter, open_dagster_pipes

from assets.training import (
    EPOCH_ROW,
    TrainingRequest,
    card_metadata,
    pipes_metadata,
    read_planned_catalogue,
    train_and_store,
)
from storage.fs import StorageRoot


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m assets.remote_training", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--databricks",
        action="store_true",
        help="read the Pipes context from and write messages to DBFS (PipesDatabricksClient's default)",
    )
    args, _ = p.parse_known_args(argv)
    io = dict(context_loader=PipesDbfsContextLoader(), message_writer=PipesDbfsMessageWriter())
    with open_dagster_pipes(**(io if args.databricks else {})) as pipes:
        from ml.device import configure_threads, resolve_device

        extras = pipes.extras
        request = TrainingRequest.from_dict(extras["request"])
        root = StorageRoot(extras["root"])  # fsspec options arrive as FSSPEC_<PROTOCOL> environment variables
        configure_threads(extras["threads"] or None)
        device = resolve_device(extras["device"])
        table, info = read_planned_catalogue(root, request)
        card = train_and_store(
            root,
            request,
            table,
            info,
            device,
            log=pipes.log.info,
            on_epoch=lambda row: pipes.report_custom_message({EPOCH_ROW: row}),
            progress=sys.stderr.isatty(),
        )
        metadata = card_metadata(
            root, card, reused=False, code_version=pipes.code_version, dagster_run_id=pipes.run_id
        )
        pipes.report_asset_materialization(metadata=pipes_metadata(metadata))


if __name__ == "__main__":
    main()
