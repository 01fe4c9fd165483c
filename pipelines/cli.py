"""The ``vitrieve`` command line: every verb that changes data runs as a Dagster materialisation.

Each verb lists only the options it uses. The choices of ``--model``, ``--loss``, ``--preset``, ``--optimizer``,
``--profile`` and ``--index-kind`` are the code's own registries, imported when argparse first needs them (a value
to check or ``--help`` to print), so ``vitrieve --help`` and the verbs that never train stay free of torch.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
from collections.abc import Iterator

from storage.ingest_idx import FASHION_MNIST_DIR

ASSET_OF_VERB = {
    "ingest": "catalogue",
    "train": "hashing_model",
    "encode": "packed_codes",
    "evaluate": "model_evaluation",
    "index": "binary_index",
}
# The assets whose config each materialising verb sets from its flags (``run`` materialises everything).
CONFIGURES = {
    "run": ("catalogue", "hashing_model", "binary_index"),
    "ingest": ("catalogue",),
    "train": ("hashing_model",),
    "encode": (),
    "evaluate": (),
    "index": ("binary_index",),
}
RUNS_TORCH = ("run", "train", "encode", "evaluate")  # the verbs that take --device
# What --seed seeds, per configured asset.
SEEDED = (("catalogue", "the sampled subsets and splits"), ("hashing_model", "the training"))


class LazyChoices:
    """The names of a registry ``module.attribute``, imported on first use (a check, an error or ``--help``)
    rather than when the parser is built."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


# The choices of options restricted to a registry. Give such an option a metavar, else argparse lists the choices
# in the usage line, which imports the registry whenever a parser is built; name them in its help (%(choices)s).
CHOICES = {
    "profile": LazyChoices("ml.recipes", "PROFILES"),
    "model": LazyChoices("ml.model_spec", "MODELS"),
    "loss": LazyChoices("ml.losses", "LOSSES"),
    "preset": LazyChoices("ml.model_spec", "PRESET_NAMES"),
    "optimizer": LazyChoices("ml.train", "OPTIMIZERS"),
    "index_kind": LazyChoices("storage.index", "KINDS"),
}


def _device_default() -> str:
    return os.environ.get("VITRIEVE_DEVICE", "auto")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalogue", default="fashion-mnist", help="catalogue name (Dagster partition)")
    p.add_argument("--root", default=None, help="storage root URI (default $VITRIEVE_ROOT or ./data)")
    p.add_argument(
        "--db",
        default=None,
        help="diagnostics DuckDB file (default $VITRIEVE_DB or <root>/diagnostics.duckdb)",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "training", "model, loss and recipe; every option left unset comes from --profile"
    )
    g.add_argument(
        "--profile",
        default="quick",
        choices=CHOICES["profile"],
        metavar="PROFILE",
        help="%(choices)s: model and recipe behind every option left unset (README, 'Profiles')",
    )
    g.add_argument(
        "--model", default=None, choices=CHOICES["model"], metavar="MODEL", help="%(choices)s (profile: vts)"
    )
    g.add_argument(
        "--loss",
        default=None,
        choices=CHOICES["loss"],
        metavar="LOSS",
        help="hashing loss: %(choices)s (profile: csq)",
    )
    g.add_argument("--bits", type=int, default=None, help="code length (profile: 64)")
    g.add_argument(
        "--preset",
        default=None,
        choices=CHOICES["preset"],
        metavar="PRESET",
        help="%(choices)s: small / small-conv (28-32 px, CPU) or the model's paper preset (224 px)",
    )
    g.add_argument(
        "--pretrained", default="", help="local path or URI of timm backbone weights (never downloaded)"
    )
    g.add_argument(
        "--optimizer",
        default=None,
        choices=CHOICES["optimizer"],
        metavar="OPTIMIZER",
        help="%(choices)s (profile: adamw)",
    )
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--force", action="store_true", help="retrain even if this exact model exists")


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
    g = p.add_argument_group("catalogue", "the source of the images and the split protocol")
    g.add_argument(
        "--source",
        default="",
        help="IDX folder, image folder (one sub-folder per class) or CSV/Parquet "
        "manifest; local path or s3:// URI (default: the built-in source of the catalogue)",
    )
    g.add_argument(
        "--train-limit", type=int, default=None, help="IDX: seeded subset of training images (quick looks)"
    )
    g.add_argument("--query-limit", type=int, default=None, help="IDX: seeded subset of query images")
    for dest, (_, kind, help_) in CATALOGUE_FLAGS.items():
        g.add_argument(
            f"--{dest.replace('_', '-')}",
            dest=dest,
            type=kind,
            default=None,
            help=help_,
            action="append" if dest == "label_column" else "store",
        )


def _index_param(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` of ``--index-param`` (every index parameter is an integer)."""
    name, _, value = text.partition("=")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=INTEGER (e.g. ef_search=256), got {text!r}"
        ) from None


def _index_args(p: argparse.ArgumentParser, *kind_flags: str) -> None:
    g = p.add_argument_group("index", "the FAISS binary index published for search")
    g.add_argument(
        *kind_flags,
        dest="index_kind",
        default=None,
        choices=CHOICES["index_kind"],
        metavar="KIND",
        help="%(choices)s (default: the kind published for the catalogue, else flat)",
    )
    g.add_argument(
        "--index-param",
        type=_index_param,
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a parameter of the index kind, e.g. m=32 or ef_search=256 for hnsw, nprobe=16 for ivf "
        "(repeatable; unset ones keep their defaults)",
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitrieve", description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    helps = {"run": "materialise the whole asset graph for a catalogue and print a summary"} | {
        verb: f"materialise {asset} for a catalogue" for verb, asset in ASSET_OF_VERB.items()
    }
    for verb, configures in CONFIGURES.items():
        p = sub.add_parser(verb, help=helps[verb], description=helps[verb])
        _common(p)
        if verb in RUNS_TORCH:
            p.add_argument("--device", default=_device_default(), help="auto | cpu | cuda[:N]")
        else:  # the compute resource of the run, which these assets never use
            p.set_defaults(device=_device_default())
        seeded = [what for asset, what in SEEDED if asset in configures]
        if seeded:
            p.add_argument("--seed", type=int, default=0, help=f"seed of {' and of '.join(seeded)}")
        if "catalogue" in configures:
            _catalogue_args(p)
        if "hashing_model" in configures:
            _train_args(p)
        if "binary_index" in configures:
            # `run` also has --source-kind, hence --index-kind; `index` takes the plain --kind as well
            _index_args(p, *(("--kind", "--index-kind") if verb == "index" else ("--index-kind",)))
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
    """(storage root, diagnostics DB) of a command line."""
    from assets.resources import default_root, diagnostics_path

    root = getattr(args, "root", None)
    return root or default_root(), diagnostics_path(root, args.db)


def _catalogue_config(args) -> dict:
    config = {
        "source": args.source,
        "seed": args.seed,
        "train_limit": args.train_limit,
        "query_limit": args.query_limit,
    }
    return config | {
        field: getattr(args, dest)
        for dest, (field, _, _) in CATALOGUE_FLAGS.items()
        if getattr(args, dest) is not None
    }


def _model_config(args) -> dict:
    config = {"profile": args.profile, "seed": args.seed, "force": args.force, "pretrained": args.pretrained}
    given = {
        "model": args.model,
        "loss": args.loss,
        "bits": args.bits,
        "preset": args.preset,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "epochs": args.epochs,
    }
    return config | {k: v for k, v in given.items() if v is not None}


def _index_config(args) -> dict:
    """The kind and its parameters, checked against the kind (against every kind's when none is given: the
    asset then keeps the catalogue's published kind and checks them there)."""
    from storage.index import DEFAULT_PARAMS

    kind, params = args.index_kind, dict(args.index_param or [])
    takes = DEFAULT_PARAMS[kind] if kind else {name for p in DEFAULT_PARAMS.values() for name in p}
    unknown = sorted(set(params) - set(takes))
    if unknown:
        raise ValueError(
            f"--index-param {', '.join(unknown)}: not a parameter of {kind or 'any index kind'} "
            f"(it takes {', '.join(sorted(takes)) or 'none'})"
        )
    return ({"kind": kind} if kind else {}) | params


CONFIG_OF_ASSET = {
    "catalogue": _catalogue_config,
    "hashing_model": _model_config,
    "binary_index": _index_config,
}


def _run_config(args) -> dict:
    """The Dagster run config (``ops`` part) of a materialising command line; ``ValueError`` if inconsistent."""
    configs = {asset: CONFIG_OF_ASSET[asset](args) for asset in CONFIGURES[args.verb]}
    return {asset: {"config": config} for asset, config in configs.items() if config}


def cmd_materialise(args, selection: list[str] | None) -> int:
    from pipelines.execution import materialise
    from pipelines.summary import print_summary

    try:
        run_config = _run_config(args)
    except ValueError as err:
        print(f"vitrieve {args.verb}: {err}", file=sys.stderr)
        return 2
    root, db = _locations(args)
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
    from bench.search import run_search_bench

    root, db = _locations(args)
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

    _, db = _locations(args)
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
    )


def cmd_sql(args) -> int:
    from tabulate import tabulate

    from storage.diagnostics import DiagnosticsDB, ReadOnlyQueryError

    _, db = _locations(args)
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
