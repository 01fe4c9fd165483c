"""Child process of the fault tests: materialises part of the graph against a persistent Dagster instance
and, with ``pause_on``, freezes inside the first atomic write whose file name contains it (the data is
written to the temporary file, not yet renamed into place) after creating ``marker``, so the parent can
SIGKILL it at that moment. Usage: ``python -m tests.fault_child '<json spec>'``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path


def freeze_on(pause_on: str, marker: str) -> None:
    from storage.fs import StorageRoot

    original = StorageRoot.atomic_open

    @contextlib.contextmanager
    def freezing(self, *parts):
        with original(self, *parts) as f:
            yield f
            if pause_on in parts[-1]:
                f.flush()
                Path(marker).write_text(self.path(*parts))
                time.sleep(600)

    StorageRoot.atomic_open = freezing


def main(spec: dict) -> int:
    if spec.get("pause_on"):
        freeze_on(spec["pause_on"], spec["marker"])
    import dagster as dg

    from tests.tiny_graph import failure_messages, run_graph

    instance = dg.DagsterInstance.local_temp(spec["home"])
    result = run_graph(
        instance, spec["name"], spec["catalogue"], spec["root"], spec["db"], spec.get("selection")
    )
    print(json.dumps({"success": result.success, "failures": failure_messages(result)}))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
