"""``vitrieve search --where``: only catalogue rows matching the SQL predicate come back, deleted rows never do,
and a bad predicate is one line on stderr with exit status 2."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np

from pipelines.cli import main
from storage.index import delete_rows
from tests.storage.test_index_tombstones import reindex, store  # noqa: F401  (the fixture)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_where_restricts_the_hits_and_deletes_hide_rows(store):  # noqa: F811
    root, _, _, db_rows, _ = store
    reindex(root, "flat", db_rows)
    delete_rows(root, "cat", db_rows[db_rows % 4 == 2][:3])
    base = ["search", "--root", root.uri, "--catalogue", "cat", "--json", "-k", "8"]
    code, out, _ = _run([*base, "--where", "label = 2", str(int(db_rows[0]))])
    assert code == 0
    hits = json.loads(out)[0]["hits"]
    assert len(hits) == 8 and all(h["labels"] == ["two"] for h in hits)
    assert not np.isin([h["row_id"] for h in hits], db_rows[db_rows % 4 == 2][:3]).any()
    code, out, _ = _run([*base, "--where", "label = 99", str(int(db_rows[0]))])
    assert code == 0 and json.loads(out)[0]["hits"] == []
    code, out, err = _run([*base, "--where", "colour = 'red'", str(int(db_rows[0]))])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(
        "vitrieve search: --where \"colour = 'red'\": Binder Error"
    )
