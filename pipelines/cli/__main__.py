"""``python -m pipelines.cli``: the ``vitrieve`` command."""

import sys

from pipelines.cli.commands import main

sys.exit(main())
