"""The command's exit path: threads joined, atexit hooks run, buffered output flushed, the status kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import atexit, sys, threading, time
from pipelines.cli.process_exit import run_and_exit

def late():
    time.sleep(0.3)
    print("thread done", end="")  # no newline: stays in the pipe's buffer until the exit flushes it

def main():
    atexit.register(lambda: open(sys.argv[1], "w").write("hook ran"))
    threading.Thread(target=late).start()
    sys.stdout.write("main done;")
    {ending}

run_and_exit(main)
"""


def _child(tmp_path: Path, ending: str) -> tuple[subprocess.CompletedProcess, Path]:
    marker = tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(ending=ending)))
    done = subprocess.run(
        [sys.executable, str(script), str(marker)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, marker


def test_exit_joins_threads_runs_hooks_and_flushes(tmp_path):
    done, marker = _child(tmp_path, "return 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "main done;thread done"
    assert marker.read_text() == "hook ran"


def test_system_exit_keeps_its_status_and_message(tmp_path):
    done, marker = _child(tmp_path, "sys.exit('bad usage')")
    assert done.returncode == 1
    assert done.stderr == "bad usage\n" and done.stdout == "main done;thread done"
    assert marker.read_text() == "hook ran"
    done, _ = _child(tmp_path, "sys.exit()")
    assert done.returncode == 0
