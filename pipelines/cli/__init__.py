"""The ``vitrieve`` command line: options (``options``), verbs (``commands``), ``search`` and the run summary."""

from pipelines.cli.commands import main

__all__ = ["main"]
