"""The ``vitrieve`` CLI verbs against the artifacts of the tiny end-to-end run."""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stdout

import pytest
from PIL import Image

from assets.resources import diagnostics_path
from pipelines.cli import main
from pipelines.cli.options import locations, parser, run_config
from storage.catalogue import read_catalogue
from storage.fs import StorageRoot
from storage.index import current


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def test_search_by_row_id_lists_itself_first(tiny_run):
    _, root, _ = tiny_run
    table, _ = read_catalogue(root, "fashion-mnist", columns=["row_id", "in_database"])
    rid = int(table.filter(table["in_database"])["row_id"][7].as_py())
    code, out = _run(["search", "--root", root.uri, "-k", "5", "--json", str(rid)])
    assert code == 0
    hits = json.loads(out)[0]["hits"]
    assert len(hits) == 5
    assert hits[0]["row_id"] == rid and hits[0]["distance"] == 0
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert hits[0]["labels"]  # label names, e.g. "Sneaker"


def test_search_by_image_file_matches_stored_code(tiny_run, tmp_path):
    _, root, _ = tiny_run
    table, _ = read_catalogue(root, "fashion-mnist", columns=["row_id", "image", "in_database"])
    db = table.filter(table["in_database"])
    path = tmp_path / "q.png"
    Image.open(io.BytesIO(db["image"][3].as_py())).save(path)
    code, out = _run(
        ["search", "--root", root.uri, "-k", "3", "--json", str(path), str(db["row_id"][3].as_py())]
    )
    assert code == 0
    by_file, by_id = json.loads(out)
    assert by_file["hits"][0]["distance"] == 0  # same pixels -> same code -> a distance-0 neighbour
    assert by_id["hits"][0]["row_id"] == db["row_id"][3].as_py()


def test_sql_reads_and_refuses_writes(tiny_run, capsys):
    _, _, db = tiny_run
    code, out = _run(
        [
            "sql",
            "--db",
            str(db.path),
            "SELECT name, k, round(value, 4) FROM metrics WHERE name = 'map' ORDER BY k",
        ]
    )
    assert code == 0 and "map" in out
    assert main(["sql", "--db", str(db.path), "DELETE FROM metrics"]) == 2
    assert "read-only" in capsys.readouterr().err
    code, out = _run(["sql", "--db", str(db.path), "SELECT count(*) AS n FROM metrics"])
    assert int(out.split()[-1]) > 0  # nothing was deleted


def test_unknown_row_id_is_a_clear_error(tiny_run, capsys):
    _, root, _ = tiny_run
    assert main(["search", "--root", root.uri, "99999999"]) == 2  # a user error (it was a SystemExit)
    err = capsys.readouterr().err
    assert "99999999" in err and "not in catalogue" in err


# Command lines and the run config that reached Dagster before each verb had its own options.
RUN_CONFIGS = [
    (
        ["run"],
        {
            "catalogue": {"config": {"source": "", "seed": 0, "train_limit": None, "query_limit": None}},
            "hashing_model": {"config": {"profile": "quick", "seed": 0, "force": False, "pretrained": ""}},
        },
    ),
    (
        ["train", "--model", "transhash", "--loss", "transhash", "--bits", "32"],
        {
            "hashing_model": {
                "config": {
                    "profile": "quick",
                    "seed": 0,
                    "force": False,
                    "pretrained": "",
                    "model": "transhash",
                    "loss": "transhash",
                    "bits": 32,
                }
            }
        },
    ),
    (
        ["ingest", "--source", "X", "--validation-size", "10"],
        {
            "catalogue": {
                "config": {
                    "source": "X",
                    "seed": 0,
                    "train_limit": None,
                    "query_limit": None,
                    "validation_size": 10,
                }
            }
        },
    ),
    (
        ["run", "--profile", "full", "--seed", "3", "--epochs", "2", "--lr", "0.001", "--optimizer", "sgd"]
        + ["--preset", "small-conv", "--pretrained", "w.safetensors", "--force", "--train-limit", "100"]
        + ["--query-limit", "20", "--label-column", "a", "--label-column", "b", "--max-reject-fraction"]
        + ["0.1", "--source-kind", "manifest", "--model", "vts-cls"],
        {
            "catalogue": {
                "config": {
                    "source": "",
                    "seed": 3,
                    "train_limit": 100,
                    "query_limit": 20,
                    "kind": "manifest",
                    "label_columns": ["a", "b"],
                    "max_reject_fraction": 0.1,
                }
            },
            "hashing_model": {
                "config": {
                    "profile": "full",
                    "seed": 3,
                    "force": True,
                    "pretrained": "w.safetensors",
                    "model": "vts-cls",
                    "preset": "small-conv",
                    "optimizer": "sgd",
                    "lr": 0.001,
                    "epochs": 2,
                }
            },
        },
    ),
    (
        ["ingest", "--source", "s3://b/x", "--seed", "2", "--train-per-label", "4", "--channels", "3"]
        + ["--protocol", "per_label"],
        {
            "catalogue": {
                "config": {
                    "source": "s3://b/x",
                    "seed": 2,
                    "train_limit": None,
                    "query_limit": None,
                    "protocol": "per_label",
                    "train_per_label": 4,
                    "channels": 3,
                }
            }
        },
    ),
    (
        ["train", "--seed", "5", "--device", "cpu", "--profile", "full"],
        {"hashing_model": {"config": {"profile": "full", "seed": 5, "force": False, "pretrained": ""}}},
    ),
    (
        ["train", "--instance", "0.3", "--instance-temperature", "0.2"],
        {
            "hashing_model": {
                "config": {
                    "profile": "quick",
                    "seed": 0,
                    "force": False,
                    "pretrained": "",
                    "instance": 0.3,
                    "instance_temperature": 0.2,
                }
            }
        },
    ),
    (["encode", "--device", "cpu"], {}),
    (["evaluate"], {}),
    (["index"], {}),
]


@pytest.mark.parametrize(("argv", "expected"), RUN_CONFIGS, ids=[" ".join(a[:3]) for a, _ in RUN_CONFIGS])
def test_run_config_of_command_lines_unchanged(argv, expected):
    assert run_config(parser().parse_args(argv)) == expected


def test_index_flags_set_the_binary_index_config(capsys):
    def config(argv):
        return run_config(parser().parse_args(argv))

    assert config(["index", "--kind", "hnsw", "--index-param", "ef_search=64", "--index-param", "m=8"]) == {
        "binary_index": {"config": {"kind": "hnsw", "ef_search": 64, "m": 8}}
    }
    assert config(["index", "--index-kind", "flat"]) == {"binary_index": {"config": {"kind": "flat"}}}
    assert config(["index", "--index-param", "nprobe=4"]) == {"binary_index": {"config": {"nprobe": 4}}}
    assert config(["run", "--index-kind", "ivf", "--index-param", "nprobe=4"])["binary_index"] == {
        "config": {"kind": "ivf", "nprobe": 4}
    }
    with pytest.raises(ValueError, match="not a parameter of flat"):
        config(["index", "--kind", "flat", "--index-param", "m=8"])
    with pytest.raises(ValueError, match="not a parameter of any index kind"):
        config(["index", "--index-param", "depth=8"])
    assert main(["index", "--kind", "ivf", "--index-param", "ef_search=8"]) == 2
    assert "it takes nlist, nprobe, train_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["index", "--index-param", "nprobe"])
    assert exit_.value.code == 2 and "NAME=INTEGER" in capsys.readouterr().err


def test_index_params_are_the_registrys():
    from storage.index import param_fields

    args = parser().parse_args(["index", *(f"--index-param={name}=1" for name in param_fields())])
    with pytest.raises(ValueError, match="not a parameter of any index kind"):
        run_config(parser().parse_args(["index", "--index-param", "m2=1"]))
    assert run_config(args)["binary_index"]["config"] == dict.fromkeys(param_fields(), 1)


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: no name broken at a hyphen
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> set[str]:
    return {word.strip("[],") for word in text.split() if word.startswith(("--", "[--"))}


CATALOGUE = {"--source", "--train-limit", "--source-kind", "--label-column", "--validation-size"}
TRAINING = {"--profile", "--model", "--loss", "--bits", "--preset", "--optimizer", "--epochs", "--force"}
TRAINING |= {"--instance", "--instance-temperature"}
INDEX = {"--index-kind", "--index-param"}


@pytest.mark.parametrize(
    ("verb", "has", "lacks"),
    [
        ("ingest", CATALOGUE | {"--seed"}, TRAINING | INDEX | {"--device"}),
        ("train", TRAINING | {"--seed", "--device"}, CATALOGUE | INDEX),
        ("encode", {"--device"}, CATALOGUE | TRAINING | INDEX | {"--seed"}),
        ("evaluate", {"--device"}, CATALOGUE | TRAINING | INDEX | {"--seed"}),
        ("index", INDEX | {"--kind"}, CATALOGUE | TRAINING | {"--device", "--seed"}),
        ("run", CATALOGUE | TRAINING | INDEX | {"--seed", "--device"}, {"--kind"}),
    ],
)
def test_each_verb_lists_only_its_options(verb, has, lacks, capsys, monkeypatch):
    options = _options(_help([verb], capsys, monkeypatch))
    assert has <= options and not lacks & options
    assert {"--catalogue", "--root", "--db"} <= options


def test_help_lists_the_registries_choices(capsys, monkeypatch):
    from ml.losses import LOSSES
    from ml.model_spec import MODELS, PRESET_NAMES
    from ml.recipes import PROFILES
    from ml.train import OPTIMIZERS
    from storage.index import KINDS

    text = _help(["train"], capsys, monkeypatch)
    for names in (MODELS, LOSSES, PRESET_NAMES, OPTIMIZERS, PROFILES):
        assert ", ".join(names) in text
    assert "--source" not in text and "--epochs" in text
    assert ", ".join(KINDS) in _help(["index"], capsys, monkeypatch)
    ingest = _help(["ingest"], capsys, monkeypatch)
    assert "--source" in ingest and "--epochs" not in ingest


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["train", "--model", "nope"], "nope"),
        (["run", "--loss", "l2"], "l2"),
        (["train", "--preset", "tiny"], "tiny"),
        (["train", "--optimizer", "lamb"], "lamb"),
        (["train", "--profile", "slow"], "slow"),
        (["index", "--kind", "lsh"], "lsh"),
        (["ingest", "--epochs", "3"], "--epochs"),
    ],
)
def test_bad_choice_or_foreign_option_is_an_argparse_error(argv, value, capsys):
    """A value outside the registry, or an option of another verb (``ingest --epochs``)."""
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error:" in err and value in err


def test_invalid_model_lists_the_models(capsys):
    from ml.model_spec import MODELS

    with pytest.raises(SystemExit):
        main(["train", "--model", "nope"])
    assert f"invalid choice: 'nope' (choose from {', '.join(map(repr, MODELS))})" in capsys.readouterr().err


# (--root, --db, $VITRIEVE_ROOT, $VITRIEVE_DB) -> diagnostics DB; None = not given / unset.
DB_LOCATIONS = [
    (None, None, None, None, "./data/diagnostics.duckdb"),
    (None, None, "/srv/v", None, "/srv/v/diagnostics.duckdb"),
    (None, None, "s3://b/v", None, "./diagnostics.duckdb"),
    (None, None, "/srv/v", "/x/env.duckdb", "/x/env.duckdb"),
    (None, None, "s3://b/v", "/x/env.duckdb", "/x/env.duckdb"),
    ("/r", None, None, None, "/r/diagnostics.duckdb"),
    ("/r", None, "s3://b/v", None, "/r/diagnostics.duckdb"),
    ("/r", None, None, "/x/env.duckdb", "/x/env.duckdb"),
    ("s3://b/p", None, None, None, "./diagnostics.duckdb"),
    ("s3://b/p", None, "/srv/v", None, "./diagnostics.duckdb"),
    ("s3://b/p", None, None, "/x/env.duckdb", "/x/env.duckdb"),
    (None, "/given.duckdb", "/srv/v", "/x/env.duckdb", "/given.duckdb"),
    ("/r", "/given.duckdb", None, "/x/env.duckdb", "/given.duckdb"),
    ("s3://b/p", "/given.duckdb", None, None, "/given.duckdb"),
]


@pytest.mark.parametrize(("root", "db", "env_root", "env_db", "expected"), DB_LOCATIONS)
def test_where_the_diagnostics_db_lives(root, db, env_root, env_db, expected, monkeypatch):
    for name, value in (("VITRIEVE_ROOT", env_root), ("VITRIEVE_DB", env_db)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert diagnostics_path(root, db) == expected
    flags = (["--root", root] if root else []) + (["--db", db] if db else [])
    for verb in ("run", "ingest", "index", "search"):
        args = parser().parse_args([verb, *flags] + (["1"] if verb == "search" else []))
        assert locations(args) == (root or env_root or "./data", expected)
    if root is None:  # `sql` has no --root: the default root's DB
        assert (
            locations(parser().parse_args(["sql", *(["--db", db] if db else []), "SELECT 1"]))[1] == expected
        )


def test_index_kind_publishes_that_kind(tiny_run, tmp_path, monkeypatch):
    """``vitrieve index --kind hnsw`` on a copy of the tiny run's storage (its Dagster instance, the session's
    $DAGSTER_HOME, names the model); the shared run's own index stays as it was."""
    _, root, _ = tiny_run
    monkeypatch.delenv("VITRIEVE_DB", raising=False)
    copy = tmp_path / "data"
    shutil.copytree(root.uri, copy)
    monkeypatch.setenv("DAGSTER_HOME", os.environ["DAGSTER_HOME"])  # the CLI sets it for the process
    code, out = _run(["index", "--kind", "hnsw", "--index-param", "ef_search=64", "--root", str(copy)])
    assert code == 0, out
    pointer = current(StorageRoot(copy), "fashion-mnist")
    assert pointer["kind"] == "hnsw" and pointer["params"]["ef_search"] == 64
    assert pointer["model_id"] == current(root, "fashion-mnist")["model_id"]
    assert current(root, "fashion-mnist")["kind"] == "flat"
