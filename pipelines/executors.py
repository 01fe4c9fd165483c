"""The executor of every job, chosen by configuration only (``VITRIEVE_EXECUTOR``):

- ``multiprocess`` (default): Dagster's default executor, each step in its own subprocess on this machine;
- ``celery``: each step sent to Celery workers (``dagster-celery``; broker and result backend from
  ``VITRIEVE_CELERY_BROKER`` / ``VITRIEVE_CELERY_BACKEND``, e.g. Redis); see docs/OPERATIONS.md;
- ``k8s``: one Kubernetes pod per step (``dagster-k8s``; GPU requests via the ``dagster-k8s/config`` op tag).
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTORS = ("multiprocess", "celery", "k8s")
# A step's task is acknowledged when it ends, not when a worker takes it: a worker lost mid-step (its pool
# process killed) hands the step back to the queue for another worker (e.g. one shard of packed_codes).
# The same keys are in pipelines/scaleout/celery.yaml, which configures the workers.
CELERY_CONFIG_SOURCE = {"task_acks_late": True, "task_reject_on_worker_lost": True}


def executor_from_env() -> dg.ExecutorDefinition | None:
    """None keeps Dagster's default (multiprocess for launched runs, in-process for ``execute_in_process``)."""
    kind = os.environ.get("VITRIEVE_EXECUTOR", "multiprocess")
    if kind == "multiprocess":
        return None
    if kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": {"env": "VITRIEVE_CELERY_BROKER"},
                "backend": {"env": "VITRIEVE_CELERY_BACKEND"},
                "config_source": CELERY_CONFIG_SOURCE,
            },
            name="celery",
        )
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"VITRIEVE_EXECUTOR={kind!r}: choose one of {', '.join(EXECUTORS)}")
