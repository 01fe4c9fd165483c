"""``catalogue_source_sensor``: new or changed catalogue folders under a watched URI start runs."""

from __future__ import annotations

import json

import dagster as dg

from assets.common import MODEL_TAG
from assets.partitions import catalogues
from assets.resources import SourceWatchResource
from pipelines.jobs import ingest_and_reindex, run_tags, train_and_publish
from storage.watch import source_fingerprints


@dg.sensor(
    jobs=[train_and_publish, ingest_and_reindex],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def catalogue_source_sensor(context: dg.SensorEvaluationContext, source_watch: SourceWatchResource):
    """Each child folder of the watched URI is a catalogue. A new one is registered as a partition and gets a
    ``train_and_publish`` run; a changed listing (cursor = listing fingerprint per catalogue) gets
    ``ingest_and_reindex`` when the catalogue has a trained model, else ``train_and_publish``."""
    if not source_watch.uri:
        return dg.SkipReason("no source URI to watch (set VITRIEVE_WATCH or the source_watch resource)")
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    found = source_fingerprints(source_watch.uri)
    changed = {name: (uri, fp) for name, (uri, fp) in found.items() if seen.get(name) != fp}
    if not changed:
        return dg.SkipReason(f"no new or changed catalogue under {source_watch.uri}")
    new = [name for name in changed if not context.instance.has_dynamic_partition(catalogues.name, name)]
    requests = []
    for name, (uri, fp) in sorted(changed.items()):
        tags = run_tags(context.instance, name, **{"vitrieve/source": uri})
        job = ingest_and_reindex if name not in new and MODEL_TAG in tags else train_and_publish
        requests.append(
            dg.RunRequest(
                run_key=f"{name}-{fp}",
                job_name=job.name,
                partition_key=name,
                tags=tags,
                run_config={"ops": {"catalogue": {"config": {"source": uri}}}},
            )
        )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[catalogues.build_add_request(new)] if new else [],
        cursor=json.dumps({**seen, **{name: fp for name, (_, fp) in changed.items()}}, sort_keys=True),
    )
