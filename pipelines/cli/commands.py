"""The ``vitrieve`` verbs: each verb that changes data runs as a Dagster materialisation."""

from __future__ import annotations

import os
import sys
import time
import traceback
import uuid
from typing import NoReturn

from pipelines.cli.errors import USER_ERROR_EXIT, UserError, as_user_error, is_user_error_name
from pipelines.cli.options import ASSET_OF_VERB, locations, parser, run_config
from pipelines.cli.process_exit import run_and_exit


def _check_inputs(args, root: str, selection: list[str] | None, instance) -> None:
    """What a one-asset verb needs before it starts: the catalogue (all but ``ingest``), a trained model (the
    verbs after ``train``); a ``UserError`` naming the verb that makes it otherwise."""
    from storage.catalogue import catalogue_exists
    from storage.fs import StorageRoot

    if selection is None or selection == ["catalogue"]:
        return
    name = args.catalogue
    if not catalogue_exists(StorageRoot(root), name):
        raise UserError(
            f"no catalogue {name!r} in {root} — run `vitrieve ingest --catalogue {name} --source URI` "
            f"(or `vitrieve run --catalogue {name} --source URI`) first"
        )
    if selection != ["hashing_model"]:
        from assets.common import latest_model_id

        if latest_model_id(instance, name) is None:
            raise UserError(
                f"catalogue {name!r} has no trained model — run `vitrieve train --catalogue {name}` first"
            )


def _root_cause(error):
    while error.cause is not None:  # the user's error, not Dagster's wrapper
        error = error.cause
    return error


def _plain(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _report_failure(args, result) -> int:
    """One line per failed step and check; 2 where every failure is the user's to fix, else 1."""
    verb, user_only, reported = args.verb, True, 0
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = _root_cause(event.step_failure_data.error)
        if error.cls_name == "DagsterAssetCheckFailedError":  # a blocking check: its own line below
            continue
        reported += 1
        user = is_user_error_name(error.cls_name)
        user_only &= user
        message = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
        head, _, rest = message.partition(": ")
        if rest and head.endswith(error.cls_name):  # "storage.sources.SourceError: folder ..."
            message = rest if user else f"{error.cls_name}: {rest}"
        hint = "" if user or args.debug else " (--debug shows the traceback)"
        print(f"vitrieve {verb}: step {event.step_key} failed: {message}{hint}", file=sys.stderr)
        if args.debug:
            print(event.step_failure_data.error.to_string(), file=sys.stderr)
    for check in result.get_asset_check_evaluations():
        if not check.passed:
            reported, user_only = reported + 1, False
            values = ", ".join(f"{k} {_plain(v.value)}" for k, v in check.metadata.items())
            print(f"vitrieve {verb}: check {check.asset_check_key.name} failed: {values}", file=sys.stderr)
    if not reported:  # the run itself failed (interrupted, or before any step)
        print(f"vitrieve {verb}: the run failed; the Dagster log has the reason", file=sys.stderr)
    return USER_ERROR_EXIT if user_only and reported else 1


def cmd_materialise(args, selection: list[str] | None) -> int:
    from ml.progress import PROGRESS_ENV
    from pipelines.cli.run_output import RunOutput, run_log_path
    from pipelines.cli.summary import print_summary
    from pipelines.execution import dagster_home, materialise, terminal_instance

    try:
        config = run_config(args)
    except ValueError as err:
        raise UserError(str(err)) from err
    root, db = locations(args)
    instance = terminal_instance(root)
    _check_inputs(args, root, selection, instance)
    run_id = str(uuid.uuid4())  # a Dagster run id, known before the run so that its log file can be named
    log_path = run_log_path(dagster_home(root), run_id)
    print(f"vitrieve {args.verb}: catalogue {args.catalogue!r}, run {run_id[:8]}, Dagster log {log_path}")
    if args.quiet:
        os.environ[PROGRESS_ENV] = "0"  # steps in child processes inherit it
    start = time.perf_counter()
    with RunOutput(log_path, debug=args.debug) as output:
        result, instance = materialise(
            args.catalogue,
            "train_and_publish",
            config,
            root,
            db,
            args.device,
            selection,
            instance=instance,
            loggers=output.logger_defs(),
            run_id=run_id,
        )
    wall = time.perf_counter() - start
    if not result.success:
        return _report_failure(args, result)
    print_summary(args.catalogue, root, db, result, instance, wall, args.verb)
    return 0


def cmd_search(args) -> int:
    from pipelines.cli.search import run_search

    root, _ = locations(args)
    return run_search(
        root,
        args.catalogue,
        args.queries,
        args.k,
        args.device,
        args.json,
        args.rerank,
        args.oversample,
        where=args.where,
    )


def cmd_bench(args) -> int:
    from bench.search import run_search_bench

    root, db = locations(args)
    return run_search_bench(
        root,
        db,
        quick=args.quick,
        datasets=args.dataset,
        kinds=args.kinds.split(",") if args.kinds else None,
        k=args.k,
        threads=args.threads,
        min_recall=args.min_recall,
        in_process=args.in_process,
        json_path=args.json,
        fit=args.fit,
    )


def cmd_bench_quality(args) -> int:
    from bench.quality import run_quality_bench

    _, db = locations(args)
    return run_quality_bench(
        db,
        profile=args.profile,
        configs=args.config,
        bits=args.bits.split(",") if args.bits else None,
        quick=args.quick,
        source=args.source,
        device=args.device,
        seed=args.seed,
        train_limit=args.train_limit,
        query_limit=args.query_limit,
        budget_minutes=args.budget_minutes,
        json_path=args.json,
        copies=args.copies,
    )


def cmd_bench_rerank(args) -> int:
    from bench.rerank import run_rerank_bench

    root, db = locations(args)
    try:
        oversamples = [int(x) for x in args.oversample.split(",") if x.strip()]
    except ValueError:
        print(f"vitrieve bench rerank: --oversample {args.oversample!r}: expected integers", file=sys.stderr)
        return 2
    return run_rerank_bench(
        root,
        db,
        args.catalogue,
        device=args.device,
        oversamples=oversamples,
        k=args.k,
        copies=args.copies,
        transforms=args.copy_transforms,
        seed=args.seed,
        query_limit=args.query_limit,
        large_batch=args.large_batch,
        json_path=args.json,
    )


def cmd_bench_faults(args) -> int:
    from bench.faults import run_fault_bench

    _, db = locations(args)
    storages = tuple(s.strip() for s in args.storage.split(",") if s.strip())
    unknown = sorted(set(storages) - {"local", "s3"})
    if unknown:
        raise UserError(f"unknown storage {', '.join(unknown)} (choose from local, s3)")
    kills = 10 if args.quick else args.kills
    return run_fault_bench(db, kills, args.seed, storages, args.workdir, args.json)


def cmd_bench_shards(args) -> int:
    from bench.shards import run_shard_bench

    root, db = locations(args)
    if args.shard_rows < 1 or args.rounds < 1:
        raise UserError("--shard-rows and --rounds must be positive")
    return run_shard_bench(
        root, db, args.catalogue, args.shard_rows, args.device, args.rounds, args.json, args.model
    )


def cmd_bench_transfer(args) -> int:
    from bench.transfer import run_transfer_bench

    _, db = locations(args)
    return run_transfer_bench(
        db,
        images=args.images,
        val_queries=args.val_queries,
        preset=args.preset,
        pretrained=args.pretrained,
        channels=args.channels,
        epochs=args.epochs,
        bits=args.bits,
        device=args.device,
        seed=args.seed,
        source=args.source,
        root=args.cache_root,
        json_path=args.json,
    )


def cmd_sql(args) -> int:
    from tabulate import tabulate

    from storage.diagnostics import DiagnosticsDB, ReadOnlyQueryError

    _, db = locations(args)
    try:
        columns, rows = DiagnosticsDB(db).query(args.query)
    except (ReadOnlyQueryError, FileNotFoundError):
        raise
    except Exception as err:  # DuckDB parser/binder errors: the query is the user's
        raise UserError(f"{type(err).__name__}: {str(err).strip().splitlines()[0]}") from err
    print(tabulate(rows, headers=columns, floatfmt=".4f"))
    return 0


def cmd_doctor(args) -> int:
    import json
    from dataclasses import asdict

    from tabulate import tabulate

    from assets.resources import default_root
    from storage.doctor import examine, fix
    from storage.fs import STALE_TEMP_SECONDS, StorageRoot

    root = StorageRoot(args.root or default_root())
    age = STALE_TEMP_SECONDS if args.older_than_minutes is None else args.older_than_minutes * 60
    findings = examine(root, older_than_s=age)
    removed = fix(root, findings) if args.fix else []
    if args.json:
        print(json.dumps([asdict(f) | {"removed": f in removed} for f in findings], indent=2))
    elif findings:
        rows = [(f.problem, f.path, f.bytes, f.detail) for f in findings]
        print(tabulate(rows, headers=["problem", "path", "bytes", "detail"]))
    total = sum(f.bytes for f in findings) / 2**20
    if not findings:
        print(f"vitrieve doctor: {root.uri}: nothing left behind", file=sys.stderr)
    elif args.fix:
        print(
            f"vitrieve doctor: removed {len(removed)} of {len(findings)} ({total:.1f} MiB)", file=sys.stderr
        )
    else:
        print(
            f"vitrieve doctor: {len(findings)} found ({total:.1f} MiB); `vitrieve doctor --fix` removes them",
            file=sys.stderr,
        )
    return 1 if findings and not args.fix else 0


def _dispatch(args) -> int:
    if args.verb == "run":
        return cmd_materialise(args, None)
    if args.verb in ASSET_OF_VERB:
        return cmd_materialise(args, [ASSET_OF_VERB[args.verb]])
    if args.verb == "search":
        return cmd_search(args)
    if args.verb == "sql":
        return cmd_sql(args)
    if args.verb == "doctor":
        return cmd_doctor(args)
    if args.verb == "bench":
        return {
            "quality": cmd_bench_quality,
            "faults": cmd_bench_faults,
            "rerank": cmd_bench_rerank,
            "transfer": cmd_bench_transfer,
            "shards": cmd_bench_shards,
        }.get(args.bench, cmd_bench)(args)
    raise AssertionError(args.verb)


def main(argv: list[str] | None = None) -> int:
    """The ``vitrieve`` command: 0 done, 1 failed, 2 a user error (one line; ``--debug`` adds the traceback)."""
    args = parser().parse_args(argv)
    prog = f"vitrieve {args.verb}" + (f" {args.bench}" if args.verb == "bench" else "")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        user = as_user_error(err)
        if user is not None:
            print(f"{prog}: {user}", file=sys.stderr)
            return USER_ERROR_EXIT
        if not args.debug:
            print(f"{prog}: {type(err).__name__}: {err} (--debug shows the traceback)", file=sys.stderr)
        return 1


def entry() -> NoReturn:
    """The ``vitrieve`` console script: :func:`main` on ``sys.argv``, then a clean process exit."""
    run_and_exit(main)


if __name__ == "__main__":
    entry()
