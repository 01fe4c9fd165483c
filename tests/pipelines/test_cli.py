"""The ``vitrieve`` CLI verbs against the artifacts of the tiny end-to-end run."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from PIL import Image

from pipelines.cli import main
from storage.catalogue import read_catalogue


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


def test_unknown_row_id_is_a_clear_error(tiny_run):
    _, root, _ = tiny_run
    try:
        main(["search", "--root", root.uri, "99999999"])
    except SystemExit as exit_:
        assert "99999999" in str(exit_.code) and "not in catalogue" in str(exit_.code)
    else:
        raise AssertionError("expected SystemExit")
