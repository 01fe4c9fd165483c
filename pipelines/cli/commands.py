"""The ``vitrieve`` verbs: each verb that changes data runs as a Dagster materialisation."""

from __future__ import annotations

import sys
import time

from pipelines.cli.options import ASSET_OF_VERB, locations, parser, run_config


def cmd_materialise(args, selection: list[str] | None) -> int:
    from pipelines.cli.summary import print_summary
    from pipelines.execution import materialise

    try:
        config = run_config(args)
    except ValueError as err:
        print(f"vitrieve {args.verb}: {err}", file=sys.stderr)
        return 2
    root, db = locations(args)
    start = time.perf_counter()
    result, instance = materialise(
        args.catalogue, "train_and_publish", config, root, db, args.device, selection
    )
    wall = time.perf_counter() - start
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                error = event.step_failure_data.error
                while error.cause is not None:  # the user's error, not Dagster's wrapper
                    error = error.cause
                print(f"step {event.step_key} failed: {error.message.strip()}", file=sys.stderr)
        failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
        for check in failed_checks:
            print(f"check {check.asset_check_key.name} failed: {dict(check.metadata)}", file=sys.stderr)
        return 1
    print_summary(args.catalogue, root, db, result, instance, wall)
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
        print(f"vitrieve bench faults: unknown storage {', '.join(unknown)} (local, s3)", file=sys.stderr)
        return 2
    kills = 10 if args.quick else args.kills
    return run_fault_bench(db, kills, args.seed, storages, args.workdir, args.json)


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
    except ReadOnlyQueryError as err:
        print(f"vitrieve sql: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"vitrieve sql: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # DuckDB parser/binder errors: show them plainly
        print(f"vitrieve sql: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
        }.get(args.bench, cmd_bench)(args)
    raise AssertionError(args.verb)


if __name__ == "__main__":
    sys.exit(main())
