"""``python -m tests.pipelines.tiny_cli ARGS``: the ``vitrieve`` command with the tiny run config
(``bench.faults.TINY_OPS``, the smallest model that works) merged into each run config it makes."""

from __future__ import annotations

import pipelines.cli.commands as commands
from bench.faults import TINY_OPS
from pipelines.cli import entry
from pipelines.cli.options import run_config


def tiny_run_config(args) -> dict:
    config = run_config(args)
    for asset, ops in TINY_OPS.items():
        if asset in config or args.verb == "run":
            config.setdefault(asset, {"config": {}})["config"].update(ops["config"])
    return config


if __name__ == "__main__":
    commands.run_config = tiny_run_config
    entry()
