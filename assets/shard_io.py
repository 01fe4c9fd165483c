"""Where the steps of the sharded ``packed_codes`` hand each other their small values (the plan, one job per
shard, each shard's outcome): JSON files through Dagster's ``UPathIOManager``, never pickles. The folder is
the instance's storage directory (every step on one host or one shared volume) or ``VITRIEVE_IO_DIR``, any
fsspec URL such as ``s3://bucket/vitrieve-io`` (steps on several hosts or Kubernetes pods)."""

import json
import os
from typing import Any

import dagster as dg
from pydantic import Field
from upath import UPath

IO_DIR_ENV = "VITRIEVE_IO_DIR"
HANDOFF = "shard_handoff"  # the io_manager_key of the sharded graph's outputs


class JsonFilesIOManager(dg.UPathIOManager):
    """Each output as one JSON file under ``base_path``/<run id>/<step>/<output>."""

    extension: str = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        path.write_text(json.dumps(obj))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        return json.loads(path.read_text())


class ShardHandoffIOManager(dg.ConfigurableIOManagerFactory):
    base_dir: str = Field(
        default="", description="folder or fsspec URL for the hand-off files; empty = the instance's storage"
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> JsonFilesIOManager:
        base = self.base_dir or os.path.join(context.instance.storage_directory(), "shard_handoff")
        return JsonFilesIOManager(base_path=UPath(base))


def handoff_io_manager() -> ShardHandoffIOManager:
    return ShardHandoffIOManager(base_dir=os.environ.get(IO_DIR_ENV, ""))
