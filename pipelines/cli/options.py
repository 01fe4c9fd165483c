"""The options of each ``vitrieve`` verb and the Dagster run config they make.

A materialising verb's options are the fields of the asset configs it sets (``CatalogueConfig``,
``HashingModelConfig``, ``IndexConfig``): name, type, default and help are read from those classes, so each is
declared once. The choices of registry-backed options are the code's own registries, imported when argparse
first needs them (a value to check or ``--help`` to print), so the verbs that never train stay free of torch.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass

ASSET_OF_VERB = {
    "ingest": "catalogue",
    "train": "hashing_model",
    "encode": "packed_codes",
    "evaluate": "model_evaluation",
    "index": "binary_index",
}
# The assets whose config each materialising verb sets from its options (``run`` materialises everything).
CONFIGURES = {
    "run": ("catalogue", "hashing_model", "packed_codes", "model_evaluation", "binary_index"),
    "ingest": ("catalogue",),
    "train": ("hashing_model",),
    "encode": ("packed_codes",),
    "evaluate": ("model_evaluation",),
    "index": ("binary_index",),
}
RUNS_TORCH = ("run", "train", "encode", "evaluate")  # the verbs that take --device
CONFIG_CLASS = {
    "catalogue": ("assets.catalogue", "CatalogueConfig"),
    "hashing_model": ("assets.model", "HashingModelConfig"),
    "binary_index": ("assets.index", "IndexConfig"),
    "packed_codes": ("assets.codes", "CodesConfig"),
    "model_evaluation": ("assets.evaluation", "EvaluationConfig"),
}
GROUPS = {
    "catalogue": ("catalogue", "the source of the images and the split protocol"),
    "hashing_model": ("training", "model, loss and recipe; every option left unset comes from --profile"),
    "binary_index": ("index", "the FAISS binary index published for search"),
    "packed_codes": ("codes", "the packed codes (and optional embeddings) of every catalogue image"),
    "model_evaluation": ("evaluation", "label metrics, and the instance (copies) protocol when asked"),
}


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


CHOICES = {
    "profile": LazyChoices("ml.recipes", "PROFILES"),
    "model": LazyChoices("ml.model_spec", "MODELS"),
    "loss": LazyChoices("ml.losses", "LOSSES"),
    "preset": LazyChoices("ml.model_spec", "PRESET_NAMES"),
    "optimizer": LazyChoices("ml.train_config", "OPTIMIZERS"),
    "instance_loss": LazyChoices("ml.train_config", "INSTANCE_LOSSES"),
    "index_kind": LazyChoices("storage.index", "KINDS"),
    "embedding_dtype": LazyChoices("ml.rerank", "EMBEDDING_DTYPES"),
    "scorer": LazyChoices("ml.rerank", "SCORERS"),
    "training": LazyChoices("assets.model", "TRAINING_MODES"),
}


@dataclass(frozen=True)
class Option:
    """A command-line option setting the config field ``field`` of ``asset``."""

    asset: str
    field: str
    flag: str = ""  # default: --<field with dashes>
    always: bool = False  # in the run config even when not given (with the config's default)
    choices: str = ""  # a key of CHOICES

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_") if self.flag else self.field

    @property
    def option(self) -> str:
        return self.flag or f"--{self.field.replace('_', '-')}"


OPTIONS = (
    Option("catalogue", "source", always=True),
    Option("catalogue", "train_limit", always=True),
    Option("catalogue", "query_limit", always=True),
    Option("catalogue", "kind", flag="--source-kind"),
    Option("catalogue", "uri_column"),
    Option("catalogue", "label_columns", flag="--label-column"),
    Option("catalogue", "label_format"),
    Option("catalogue", "split_column"),
    Option("catalogue", "id_column"),
    Option("catalogue", "folder_labels"),
    Option("catalogue", "include"),
    Option("catalogue", "exclude"),
    Option("catalogue", "protocol"),
    Option("catalogue", "query_fraction"),
    Option("catalogue", "max_queries"),
    Option("catalogue", "train_fraction"),
    Option("catalogue", "max_train"),
    Option("catalogue", "train_per_label"),
    Option("catalogue", "query_per_label"),
    Option("catalogue", "min_label_images"),
    Option("catalogue", "database"),
    Option("catalogue", "validation_fraction"),
    Option("catalogue", "max_validation"),
    Option("catalogue", "validation_size"),
    Option("catalogue", "channels"),
    Option("catalogue", "max_reject_fraction"),
    Option("hashing_model", "profile", always=True, choices="profile"),
    Option("hashing_model", "model", choices="model"),
    Option("hashing_model", "loss", choices="loss"),
    Option("hashing_model", "bits"),
    Option("hashing_model", "preset", choices="preset"),
    Option("hashing_model", "pretrained", always=True),
    Option("hashing_model", "optimizer", choices="optimizer"),
    Option("hashing_model", "lr"),
    Option("hashing_model", "epochs"),
    Option("hashing_model", "force", always=True),
    Option("hashing_model", "training", choices="training"),
    Option("hashing_model", "patience"),
    Option("hashing_model", "instance"),
    Option("hashing_model", "instance_temperature"),
    Option("hashing_model", "instance_koleo"),
    Option("hashing_model", "instance_bits"),
    Option("hashing_model", "instance_loss", choices="instance_loss"),
    Option("binary_index", "kind", flag="--index-kind", choices="index_kind"),
    Option("packed_codes", "embeddings", choices="embedding_dtype"),
    Option("model_evaluation", "copy_protocol"),
    Option("model_evaluation", "copies"),
    Option("model_evaluation", "copy_transforms"),
    Option("model_evaluation", "rerank"),
    Option("model_evaluation", "oversample"),
)
# --seed seeds every configured asset that has a seed field (the catalogue's splits, the training)
SEEDED = ("catalogue", "hashing_model")


@functools.cache
def config_fields(asset: str) -> dict:
    """The pydantic fields of ``asset``'s Dagster config class."""
    module, name = CONFIG_CLASS[asset]
    return getattr(importlib.import_module(module), name).model_fields


def _value_type(annotation) -> tuple[type, bool]:
    """(argparse type, repeatable) of a config field's annotation (``int | None`` -> int, ``list[str]`` -> str)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _add_option(group, opt: Option, *flags: str) -> None:
    field = config_fields(opt.asset)[opt.field]
    about = field.description or opt.field.replace("_", " ")
    kind, repeat = _value_type(field.annotation)
    if kind is bool:  # unset (None) unless given, so that the run config names only what was asked
        group.add_argument(
            *(flags or (opt.option,)),
            dest=opt.dest,
            action="store_true",
            default=False if opt.always else None,
            help=about,
        )
        return
    default = field.get_default(call_default_factory=True) if opt.always else None
    if field.default not in (None, "", [], {}) and not opt.always and not opt.choices:
        about = f"{about} (default {field.default})"
    extra = {"choices": CHOICES[opt.choices], "metavar": opt.dest.upper()} if opt.choices else {"type": kind}
    if opt.choices:
        about = f"%(choices)s: {about}"
    group.add_argument(
        *(flags or (opt.option,)),
        dest=opt.dest,
        default=default,
        action="append" if repeat else "store",
        help=about.replace("%", "%%") if not opt.choices else about,
        **extra,
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


def _asset_options(p: argparse.ArgumentParser, verb: str, asset: str) -> None:
    g = p.add_argument_group(*GROUPS[asset])
    for opt in OPTIONS:
        if opt.asset != asset:
            continue
        # `run` also has --source-kind, hence --index-kind; `index` takes the plain --kind as well
        both = verb == "index" and opt.dest == "index_kind"
        _add_option(g, opt, *(("--kind", "--index-kind") if both else ()))
    if asset == "binary_index":
        g.add_argument(
            "--index-param",
            type=_index_param,
            action="append",
            default=None,
            metavar="NAME=VALUE",
            help="a parameter of the index kind, e.g. m=32 or ef_search=256 for hnsw, nprobe=16 for ivf "
            "(repeatable; unset ones keep their defaults)",
        )


def _device_default() -> str:
    return os.environ.get("VITRIEVE_DEVICE", "auto")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where the options are listed, not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (options: `{self.prog} --help`)\n")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="tracebacks of errors, Dagster's log on the terminal")


def _common(
    p: argparse.ArgumentParser,
    catalogue: str | None = "fashion-mnist",
    about: str = "catalogue name (Dagster partition)",
) -> None:
    p.add_argument("--catalogue", default=catalogue, help=about)
    _output(p)
    p.add_argument("--root", default=None, help="storage root URI (default $VITRIEVE_ROOT or ./data)")
    p.add_argument(
        "--db",
        default=None,
        help="diagnostics DuckDB file (default $VITRIEVE_DB or <root>/diagnostics.duckdb)",
    )


def _materialising_verbs(sub) -> None:
    helps = {"run": "materialise the whole asset graph for a catalogue and print a summary"} | {
        verb: f"materialise {asset} for a catalogue" for verb, asset in ASSET_OF_VERB.items()
    }
    for verb, configures in CONFIGURES.items():
        p = sub.add_parser(verb, help=helps[verb], description=helps[verb])
        _common(p)
        p.add_argument(
            "--quiet", action="store_true", help="no progress bars (still one line per step and the summary)"
        )
        if verb in RUNS_TORCH:
            p.add_argument("--device", default=_device_default(), help="auto | cpu | cuda[:N]")
        else:  # the compute resource of the run, which these assets never use
            p.set_defaults(device=_device_default())
        seeded = [config_fields(a)["seed"].description for a in SEEDED if a in configures]
        if seeded:
            p.add_argument("--seed", type=int, default=0, help="; ".join(seeded))
        for asset in configures:
            _asset_options(p, verb, asset)


def _bench_verbs(sub) -> None:
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
        help="fashion-mnist | real:<catalogue> | synthetic-1m | synthetic-10m | synthetic-<N>k | "
        "fitted-<N>k | fitted-<N>m (repeatable)",
    )
    p.add_argument(
        "--fit",
        default=None,
        metavar="CATALOGUE",
        help="fitted-* datasets: fit the generator to this catalogue's published codes under --root "
        "(default: the bundled Open Clip Art codes)",
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
        "--profile",
        default="quick",
        choices=CHOICES["profile"],
        metavar="PROFILE",
        help="%(choices)s: recipe behind each --config",
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
    p.add_argument("--source", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--device", default=_device_default())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="seeded subset of training images")
    p.add_argument("--query-limit", type=int, default=None, help="seeded subset of query images")
    p.add_argument(
        "--copies",
        type=int,
        default=2000,
        help="database images copied into instance queries (copy recall columns; 0 = none; 200 with --quick)",
    )
    p.add_argument(
        "--quick", action="store_true", help="CI: one 1-epoch run on 2,000 train / 500 query images, checked"
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p = bench.add_parser(
        "rerank",
        help="re-ranking none / asymmetric / stored at several oversamplings: label mAP@100, copy recall@1, "
        "QPS, bytes per image, on a published catalogue",
    )
    _common(p)
    p.add_argument("--device", default=_device_default())
    p.add_argument("--oversample", default="1,2,4,8", help="comma-separated oversampling factors")
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--copies", type=int, default=2000, help="database images copied into instance queries")
    p.add_argument("--copy-transforms", default="easy+hard", help="families of the copies: easy, hard, '+'")
    p.add_argument("--seed", type=int, default=0, help="seed of the copies and of --query-limit")
    p.add_argument("--query-limit", type=int, default=None, help="seeded subset of the label queries")
    p.add_argument("--large-batch", type=int, default=256, help="batch of the large-batch QPS")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p = bench.add_parser(
        "transfer", help="frozen-backbone transfer: feature extraction img/s and head training time"
    )
    _common(p)
    p.add_argument("--images", type=int, default=10_000, help="training images (Fashion-MNIST, resized)")
    p.add_argument("--val-queries", type=int, default=500, help="held-out validation queries")
    p.add_argument("--preset", default="transfer-vits16", help="transfer preset (default ViT-S/16, 224 px)")
    p.add_argument(
        "--pretrained",
        default="none",
        help="backbone weights (timm name, file, URI); none: random, same timing",
    )
    p.add_argument("--channels", type=int, default=3, help="image channels (grey repeated)")
    p.add_argument("--epochs", type=int, default=None, help="head epochs (default: the transfer profile's)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--device", default=_device_default())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--cache-root", default=None, help="feature cache root (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the row to this JSON file")
    p = bench.add_parser(
        "shards", help="encoding images/s of one worker: one-step packed_codes against the sharded graph"
    )
    _common(p)
    p.add_argument("--shard-rows", type=int, default=20_000, help="catalogue rows per shard")
    p.add_argument("--model", default=None, help="model id (default: the published index's model)")
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds, each path once per round, order alternating"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the row to this JSON file")
    p = bench.add_parser("faults", help="SIGKILL the pipeline at random moments; count corrupt states")
    _common(p)
    p.add_argument("--kills", type=int, default=200, help="kills in the campaign")
    p.add_argument("--quick", action="store_true", help="CI: 10 kills")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument(
        "--storage", default="local,s3", help="comma-separated: local, s3 (moto on 127.0.0.1 if no endpoint)"
    )
    p.add_argument(
        "--workdir", default=None, help="keep the campaign's files here (default: a temporary folder)"
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="vitrieve", description="The vitrieve command line.")
    sub = ap.add_subparsers(dest="verb", required=True)
    _materialising_verbs(sub)
    p = sub.add_parser("search", help="top-k neighbours of row ids or image files in the published index")
    _common(p, None, "catalogue name (default: the only catalogue with a published index)")
    p.add_argument("queries", nargs="+", help="row ids (integers) or image file paths")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--rerank",
        default="none",
        choices=CHOICES["scorer"],
        metavar="SCORER",
        help="%(choices)s: re-score the index's top oversample x k by the query's real-valued output "
        "against the codes (asymmetric) or the stored embeddings (stored)",
    )
    p.add_argument("--oversample", type=int, default=4, help="re-ranked shortlist = oversample x k")
    p.add_argument(
        "--where",
        default=None,
        help="SQL predicate over the catalogue's columns (DuckDB), e.g. \"label = 3\" or \"split = 'database' "
        "AND label_name = 'Bag'\": only matching rows are returned",
    )
    _bench_verbs(sub)
    p = sub.add_parser("doctor", help="check a storage root for leftovers of interrupted or superseded runs")
    p.add_argument("--root", default=None, help="storage root URI (default $VITRIEVE_ROOT or ./data)")
    p.add_argument(
        "--fix", action="store_true", help="remove what it finds (live writers' files are never touched)"
    )
    p.add_argument(
        "--older-than-minutes",
        type=float,
        default=None,
        help="age after which a temporary file counts as left behind (default 15)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _output(p)
    p = sub.add_parser("sql", help="run a read-only SQL query on the diagnostics DB")
    p.add_argument("query")
    p.add_argument("--db", default=None)
    _output(p)
    return ap


def locations(args: argparse.Namespace) -> tuple[str, str]:
    """(storage root, diagnostics DB) of a command line."""
    from assets.resources import default_root, diagnostics_path

    root = getattr(args, "root", None)
    return root or default_root(), diagnostics_path(root, args.db)


def _index_params(kind: str | None, params: dict[str, int]) -> dict[str, int]:
    """``--index-param`` values checked against the kind (against every kind's when none is given: the asset then
    keeps the catalogue's published kind and checks them there)."""
    from storage.index import get_kind, param_fields

    takes = {p.name for p in get_kind(kind).param_specs} if kind else set(param_fields())
    unknown = sorted(set(params) - takes)
    if unknown:
        raise ValueError(
            f"--index-param {', '.join(unknown)}: not a parameter of {kind or 'any index kind'} "
            f"(it takes {', '.join(sorted(takes)) or 'none'})"
        )
    return params


def run_config(args: argparse.Namespace) -> dict:
    """The Dagster run config (``ops`` part) of a materialising command line; ``ValueError`` if inconsistent."""
    configs: dict[str, dict] = {}
    for asset in CONFIGURES[args.verb]:
        config = {"seed": args.seed} if asset in SEEDED else {}
        for opt in OPTIONS:
            value = getattr(args, opt.dest) if opt.asset == asset else None
            if opt.asset == asset and (opt.always or value is not None):
                config[opt.field] = value
        if asset == "binary_index":
            config |= _index_params(config.get("kind"), dict(args.index_param or []))
        configs[asset] = config
    return {asset: {"config": config} for asset, config in configs.items() if config}
