"""What ``vitrieve`` prints, run as a user runs it (a subprocess) on a tiny catalogue: one line per step and the
summary last, no warnings or Dagster DEBUG lines, user errors in one line with exit status 2."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_fashion_mnist

REPO = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"^  (\S+) +(ok|failed|skipped|check failed) *(\d+\.\d)?s?$")
NOISE = ("Warning", "DEBUG", "Traceback")


def vitrieve(*argv: str, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``vitrieve ARGV`` with the tiny run config, its stdout not a terminal (as in CI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITRIEVE_", "DAGSTER_HOME"))}
    env |= {"PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home), "VITRIEVE_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "tests.pipelines.tiny_cli", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``vitrieve run`` of a 200-image catalogue: (completed process, storage root, Dagster home)."""
    from storage.ingest_idx import FASHION_MNIST_DIR

    tmp = tmp_path_factory.mktemp("cli_output")
    root, home = tmp / "data", tmp / "dagster_home"
    limits = ["--train-limit", "160", "--query-limit", "40", "--validation-size", "20"]
    done = vitrieve(
        "run", "--catalogue", "tiny", "--root", str(root), "--source", FASHION_MNIST_DIR, *limits, home=home
    )
    return done, root, home


@needs_fashion_mnist
def test_run_prints_one_line_per_step_then_the_summary(cli_run):
    import dagster as dg

    done, root, home = cli_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # no warning, no Dagster log, no progress bar (stderr is not a terminal)
    assert not [word for word in NOISE if word in done.stdout]
    lines = done.stdout.splitlines()
    print(f"`vitrieve run` on the tiny catalogue: {len(lines)} lines")
    assert len(lines) <= 40  # two screens are 100 lines; the tiny run has the whole run's steps

    header = re.match(r"vitrieve run: catalogue 'tiny', run ([0-9a-f]{8}), Dagster log (\S+)$", lines[0])
    assert header, lines[0]
    log = Path(header[2])
    assert log.parent.parent == home and log.stem.startswith(header[1])
    text = log.read_text()
    assert "STEP_SUCCESS" in text and "epoch 1/1" in text  # the events and the assets' messages

    steps = [m for m in map(STEP_LINE.match, lines) if m]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        stats = instance.get_run_step_stats(log.stem)
    assert [m[1] for m in steps] == [s.step_key for s in stats]  # each step once, in the order it ran
    assert {m[2] for m in steps} == {"ok"} and all(m[3] for m in steps)

    success = lines.index("vitrieve run: success")
    assert success > lines.index(steps[-1][0])
    assert lines[-1].startswith("  query:") and "vitrieve sql" in lines[-1]  # the summary ends the output
    assert not [line for line in lines[success:] if STEP_LINE.match(line)]


def test_help_prints_no_warning(tmp_path):
    done = vitrieve("run", "--help", home=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert "--quiet" in done.stdout and "--debug" in done.stdout


def _row_id(root: Path) -> int:
    from storage.catalogue import read_catalogue
    from storage.fs import StorageRoot

    table, _ = read_catalogue(StorageRoot(root), "tiny", columns=["row_id", "in_database"])
    return int(table.filter(table["in_database"])["row_id"][0].as_py())


@needs_fashion_mnist
def test_search_without_catalogue_uses_the_only_one(cli_run):
    done, root, home = cli_run
    rid = _row_id(root)
    found = vitrieve("search", "--root", str(root), "--json", "-k", "3", str(rid), home=home)
    assert found.returncode == 0 and found.stderr == "", found.stderr
    assert json.loads(found.stdout)[0]["hits"][0]["row_id"] == rid


@needs_fashion_mnist
def test_search_without_catalogue_names_the_catalogues(cli_run, tmp_path):
    _, root, home = cli_run
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    shutil.copytree(copy / "indexes" / "tiny", copy / "indexes" / "other")
    done = vitrieve("search", "--root", str(copy), "1", home=home)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "vitrieve search: 2 catalogues have an index: other, tiny — choose one with --catalogue"
    ]


@needs_fashion_mnist
def test_user_error_is_one_line_and_debug_shows_the_traceback(cli_run):
    _, root, home = cli_run
    done = vitrieve("search", "--root", str(root), "--catalogue", "nope", "1", home=home)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"vitrieve search: no index for catalogue 'nope' in {root} — run `vitrieve run --catalogue nope` "
        "first (catalogues with an index: tiny)"
    ]
    debug = vitrieve("search", "--root", str(root), "--catalogue", "nope", "--debug", "1", home=home)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "pick_catalogue" in debug.stderr
    assert debug.stderr.splitlines()[-1] == done.stderr.splitlines()[0]


@needs_fashion_mnist
def test_missing_catalogue_is_a_user_error_before_any_run(cli_run):
    _, root, home = cli_run
    done = vitrieve("train", "--root", str(root), "--catalogue", "nope", home=home)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"vitrieve train: no catalogue 'nope' in {root} — run `vitrieve ingest --catalogue nope --source URI` "
        "(or `vitrieve run --catalogue nope --source URI`) first"
    ]


def test_bad_source_fails_its_step_in_one_line(tmp_path):
    missing = tmp_path / "no-such-folder"
    argv = ("ingest", "--root", str(tmp_path / "data"), "--catalogue", "x", "--source", str(missing))
    done = vitrieve(*argv, home=tmp_path / "home")
    assert done.returncode == 2
    steps = [m.group(1, 2) for m in map(STEP_LINE.match, done.stdout.splitlines()) if m]
    assert steps == [("catalogue", "failed")]
    assert done.stderr.splitlines() == [
        f"vitrieve ingest: step catalogue failed: image folder '{missing}' does not exist or is not a folder"
    ]
    debug = vitrieve(*argv, "--debug", home=tmp_path / "home")
    assert debug.returncode == 2 and "Stack Trace" in debug.stderr and "list_folder" in debug.stderr


def test_bad_option_value_is_one_line(tmp_path):
    done = vitrieve("run", "--bits", "x", home=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "vitrieve run: error: argument --bits: invalid int value: 'x' (options: `vitrieve run --help`)"
    ]


def test_library_user_errors_are_named_right():
    """Each library error mapped to a user error by module and name exists there (a rename breaks this)."""
    import importlib

    from pipelines.cli.errors import LIBRARY_USER_ERRORS, UserError, as_user_error

    for module, names in LIBRARY_USER_ERRORS.items():
        for name in names:
            cls = getattr(importlib.import_module(module), name)
            assert issubclass(cls, Exception)
            err = cls.__new__(cls)  # whatever else its constructor takes
            Exception.__init__(err, "bad input\nmore")
            assert isinstance(as_user_error(err), UserError) and str(as_user_error(err)) == "bad input"
    assert as_user_error(KeyError("x")) is None and as_user_error(RuntimeError("x")) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("terminal", "enabled", "env", "shown"),
    [
        (True, True, None, True),
        (True, True, "0", False),  # vitrieve --quiet
        (True, False, None, False),
        (False, True, None, False),  # CI logs, pipes
    ],
)
def test_progress_bars_only_on_a_terminal(terminal, enabled, env, shown, monkeypatch):
    from ml.progress import PROGRESS_ENV, progress_bar

    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    if env is None:
        monkeypatch.delenv(PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(PROGRESS_ENV, env)
    bar = progress_bar(5, "epoch 1/2", "img", enabled=enabled)
    bar.update(5)
    bar.set_postfix(loss="0.5000")
    bar.close()
    assert ("epoch 1/2" in stream.getvalue()) is shown
    assert ("5/5" in stream.getvalue()) is shown


def test_quiet_sets_the_progress_switch(monkeypatch, tmp_path):
    """``--quiet`` sets ``$VITRIEVE_PROGRESS`` to 0 for the run (steps in child processes inherit it)."""
    from ml.progress import PROGRESS_ENV
    from pipelines.cli import main

    monkeypatch.setenv(PROGRESS_ENV, "1")  # restored (unset) after the test
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    argv = ["ingest", "--root", str(tmp_path / "data"), "--catalogue", "x", "--source", str(tmp_path / "no")]
    assert main(argv) == 2  # the source is missing: the catalogue step fails
    assert os.environ[PROGRESS_ENV] == "1"
    assert main([*argv, "--quiet"]) == 2
    assert os.environ[PROGRESS_ENV] == "0"


@needs_fashion_mnist
def test_missing_model_is_a_user_error_before_any_run(cli_run, tmp_path):
    """``vitrieve encode`` where the catalogue exists but the instance (a fresh one here) knows no model."""
    _, root, _ = cli_run
    done = vitrieve("encode", "--root", str(root), "--catalogue", "tiny", home=tmp_path / "fresh_home")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "vitrieve encode: catalogue 'tiny' has no trained model — run `vitrieve train --catalogue tiny` first"
    ]
