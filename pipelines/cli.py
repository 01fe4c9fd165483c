"""The ``vitrieve`` command line: every verb that changes data runs as a Dagster materialisation."""

from __future__ import annotations

import argparse
import os
import sys
import time

from pipelines.resources import default_db, default_root
from storage.ingest_idx import FASHION_MNIST_DIR

ASSET_OF_VERB = {
    "ingest": "catalogue",
    "train": "hashing_model",
    "encode": "packed_codes",
    "evaluate": "model_evaluation",
    "index": "binary_index",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalogue", default="fashion-mnist", help="catalogue name (Dagster partition)")
    p.add_argument("--root", default=None, help="storage root URI (default $VITRIEVE_ROOT or ./data)")
    p.add_argument(
        "--db",
        default=None,
        help="diagnostics DuckDB file (default $VITRIEVE_DB or <root>/diagnostics.duckdb)",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        default="quick",
        choices=["quick", "full"],
        help="model and recipe behind every option left unset (README, 'Profiles')",
    )
    p.add_argument(
        "--model", default=None, help="vts | vts-cls | xhashnet | transhash | hybridhash (profile: vts)"
    )
    p.add_argument("--loss", default=None, help="hashing loss (profile: csq)")
    p.add_argument("--bits", type=int, default=None, help="code length (profile: 64)")
    p.add_argument(
        "--preset",
        default=None,
        help="small / small-conv (28-32 px, CPU) or the model's paper preset (224 px)",
    )
    p.add_argument(
        "--pretrained", default="", help="local path or URI of timm backbone weights (never downloaded)"
    )
    p.add_argument("--optimizer", default=None, choices=["adamw", "adam", "rmsprop", "sgd"])
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--device", default=os.environ.get("VITRIEVE_DEVICE", "auto"), help="auto | cpu | cuda[:N]"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--source",
        default="",
        help="IDX folder, image folder (one sub-folder per class) or CSV/Parquet "
        "manifest; local path or s3:// URI (default: the built-in source of the catalogue)",
    )
    p.add_argument(
        "--train-limit", type=int, default=None, help="IDX: seeded subset of training images (quick looks)"
    )
    p.add_argument("--query-limit", type=int, default=None, help="IDX: seeded subset of query images")
    p.add_argument("--force", action="store_true", help="retrain even if this exact model exists")
    _catalogue_args(p)


# Catalogue config fields settable from the command line; left out, the CatalogueConfig default holds.
CATALOGUE_FLAGS = {
    "source_kind": ("kind", str, "auto | idx | folder | manifest"),
    "uri_column": ("uri_column", str, "manifest: image path/URI column (default uri)"),
    "label_column": ("label_columns", str, "manifest: label column (repeat for several; default label)"),
    "label_format": ("label_format", str, "manifest: values (names/ids, several split on '|') | one_hot"),
    "split_column": ("split_column", str, "manifest: column naming each image's split (explicit protocol)"),
    "id_column": ("id_column", str, "manifest: image id column (default: the uri as written)"),
    "protocol": ("protocol", str, "auto | explicit | per_label"),
    "train_per_label": ("train_per_label", int, "per_label: training images drawn per label (default 500)"),
    "query_per_label": ("query_per_label", int, "per_label: query images drawn per label (default 100)"),
    "database": ("database", str, "all (every non-query image) | rest (neither query nor train)"),
    "validation_size": (
        "validation_size",
        int,
        "training images held out for model selection (default 5000)",
    ),
    "channels": ("channels", int, "model channels: 0 = from the images, 1 or 3"),
    "max_reject_fraction": (
        "max_reject_fraction",
        float,
        "fail the ingest above this share of rejected items",
    ),
}


def _catalogue_args(p: argparse.ArgumentParser) -> None:
    for dest, (_, kind, help_) in CATALOGUE_FLAGS.items():
        p.add_argument(
            f"--{dest.replace('_', '-')}",
            dest=dest,
            type=kind,
            default=None,
            help=help_,
            action="append" if dest == "label_column" else "store",
        )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitrieve", description=__doc__)
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("run", help="materialise the whole asset graph for a catalogue and print a summary")
    _common(p)
    _train_args(p)
    for verb, asset in ASSET_OF_VERB.items():
        p = sub.add_parser(verb, help=f"materialise {asset} for a catalogue")
        _common(p)
        _train_args(p)
    p = sub.add_parser("search", help="top-k neighbours of row ids or image files in the published index")
    _common(p)
    p.add_argument("queries", nargs="+", help="row ids (integers) or image file paths")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("bench", help="benchmarks; prints a table and stores rows in the diagnostics DB")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser(
        "search", help="index kinds vs exact search and NumPy: build, bytes, latency, QPS, recall"
    )
    _common(p)
    p.add_argument(
        "--quick", action="store_true", help="small synthetic N; asserts recall and consistency (CI)"
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="fashion-mnist | real:<catalogue> | synthetic-1m | synthetic-10m | synthetic-<N>k (repeatable)",
    )
    p.add_argument(
        "--kinds", default=None, help="comma-separated index kinds (default: all that fit the dataset)"
    )
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-recall", type=float, default=0.9, help="--quick fails below this ANN recall@k")
    p.add_argument("--in-process", action="store_true", help="do not isolate each dataset in its own process")
    p.add_argument("--json", default=None, help="also write the full results to this JSON file")
    p = bench.add_parser(
        "quality", help="train + evaluate configurations on the Fashion-MNIST protocol; leaderboard"
    )
    _common(p)
    p.add_argument(
        "--profile", default="quick", choices=["quick", "full"], help="recipe behind each --config"
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        help="fields replacing the profile's, e.g. 'bits=32' or 'model=transhash,loss=transhash' (repeatable)",
    )
    p.add_argument(
        "--bits", default=None, help="comma-separated code lengths: one run per length of each --config"
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="wall-clock training budget per run (0 = none); where the epochs would not fit, fewer main "
        "epochs run (their cosine ends sooner) so that the clean epochs still do",
    )
    p.add_argument("--source", default=FASHION_MNIST_DIR, help="Fashion-MNIST IDX directory")
    p.add_argument("--device", default=os.environ.get("VITRIEVE_DEVICE", "auto"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="seeded subset of training images")
    p.add_argument("--query-limit", type=int, default=None, help="seeded subset of query images")
    p.add_argument(
        "--quick", action="store_true", help="CI: one 1-epoch run on 2,000 train / 500 query images, checked"
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p = sub.add_parser("sql", help="run a read-only SQL query on the diagnostics DB")
    p.add_argument("query")
    p.add_argument("--db", default=None)
    return ap


def _locations(args) -> tuple[str, str]:
    root = args.root or default_root()
    return root, args.db or (
        os.path.join(root, "diagnostics.duckdb") if args.root and "://" not in root else default_db()
    )


def _run_config(args) -> dict:
    cat = {
        "source": args.source,
        "seed": args.seed,
        "train_limit": args.train_limit,
        "query_limit": args.query_limit,
    }
    cat |= {
        field: getattr(args, dest)
        for dest, (field, _, _) in CATALOGUE_FLAGS.items()
        if getattr(args, dest) is not None
    }
    model = {"profile": args.profile, "seed": args.seed, "force": args.force, "pretrained": args.pretrained}
    given = {
        "model": args.model,
        "loss": args.loss,
        "bits": args.bits,
        "preset": args.preset,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "epochs": args.epochs,
    }
    model.update({k: v for k, v in given.items() if v is not None})
    return {"catalogue": {"config": cat}, "hashing_model": {"config": model}}


def cmd_materialise(args, selection: list[str] | None) -> int:
    from pipelines.execution import materialise
    from pipelines.summary import print_summary

    root, db = _locations(args)
    run_config = _run_config(args)
    if selection:
        run_config = {k: v for k, v in run_config.items() if k in selection}
    start = time.perf_counter()
    result, instance = materialise(
        args.catalogue, "train_and_publish", run_config, root, db, args.device, selection
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
    from pipelines.search_cli import run_search

    root, _ = _locations(args)
    return run_search(root, args.catalogue, args.queries, args.k, args.device, args.json)


def cmd_bench(args) -> int:
    from storage.search_bench import default_specs, format_table, quick_assertions, run_bench

    root, db = _locations(args)
    try:
        specs = default_specs(
            args.quick,
            args.dataset,
            root,
            args.threads,
            args.k,
            args.kinds.split(",") if args.kinds else None,
        )
    except ValueError as err:
        print(f"vitrieve {err}", file=sys.stderr)
        return 2
    results = run_bench(specs, db, isolate=not args.in_process, log=lambda m: print(m, file=sys.stderr))
    print(format_table(results))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    problems = quick_assertions(results, args.min_recall) if args.quick else []
    for problem in problems:
        print(f"vitrieve bench search: FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_bench_quality(args) -> int:
    from ml.device import configure_threads, resolve_device
    from ml.models import ModelSpec
    from ml.recipes import resolve_profile
    from pipelines.quality_bench import (
        format_leaderboard,
        load_protocol,
        parse_config,
        quick_problems,
        run_config,
    )
    from storage.diagnostics import DiagnosticsDB

    _, db_path = _locations(args)
    try:
        configs = [parse_config(c) for c in (args.config or [""])]
        if args.bits:
            configs = [c | {"bits": int(b)} for c in configs for b in args.bits.split(",")]
        if args.quick:
            configs = [c | {"epochs": 1} for c in configs]
        specs = [resolve_profile(args.profile, **c) for c in configs]
    except ValueError as err:
        print(f"vitrieve bench quality: {err}", file=sys.stderr)
        return 2
    configure_threads()
    device = resolve_device(args.device)
    train_limit, query_limit = (2000, 500) if args.quick else (args.train_limit, args.query_limit)
    protocols: dict = {}
    rows = []
    db = DiagnosticsDB(db_path)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    for given, r in zip(configs, specs, strict=True):
        size = ModelSpec(model=r["model"], preset=r["preset"]).img_size
        if size not in protocols:
            sizes = dict(validation_size=500, val_queries=500, val_database=1000) if args.quick else {}
            protocols[size] = load_protocol(
                args.source, size, 1, args.seed, train_limit, query_limit, **sizes
            )
        rows.append(
            run_config(
                args.profile,
                dict(given),
                protocols[size],
                device,
                db,
                args.seed,
                args.budget_minutes * 60,
                log,
            )
        )
        print(format_leaderboard(rows[-1:]), file=sys.stderr)
    print(format_leaderboard(rows))
    print(f"\nrows in {db_path}: SELECT * FROM quality_leaderboard")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=str)
    problems = quick_problems(rows) if args.quick else []
    for problem in problems:
        print(f"vitrieve bench quality: FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_sql(args) -> int:
    from tabulate import tabulate

    from storage.diagnostics import DiagnosticsDB, ReadOnlyQueryError

    db = args.db or default_db()
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
    if args.verb == "bench":
        return cmd_bench_quality(args) if args.bench == "quality" else cmd_bench(args)
    raise AssertionError(args.verb)


if __name__ == "__main__":
    sys.exit(main())
