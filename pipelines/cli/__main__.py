"""``python -m pipelines.cli``: the ``vitrieve`` command."""

from pipelines.cli.commands import entry

entry()
