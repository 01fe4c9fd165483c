"""The ``vitrieve`` command line: options (``options``), verbs (``commands``), ``search`` and the run summary."""

from pipelines.cli.commands import entry, main

__all__ = ["entry", "main"]
