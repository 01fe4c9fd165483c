"""``vitrieve search``: row ids or image files -> top-k row ids, distances and labels from the published index;
``--rerank asymmetric|stored`` re-scores the index's top ``--oversample x k`` (``ml.rerank``)."""

from __future__ import annotations

import json
import os

import numpy as np

from pipelines.cli.errors import UserError
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.fs import StorageRoot
from storage.index import current, load_index, read_tombstones, rows_where, search_published


def query_codes(
    root: StorageRoot, catalogue: str, model_id: str, queries: list[str], device: str
) -> tuple[np.ndarray, list]:
    """Codes of the queries: stored codes for row ids, fresh encodings for image files."""
    row_ids, codes, _ = read_codes(root, catalogue, model_id)
    out, own = [], []
    files = [q for q in queries if not q.lstrip("-").isdigit()]
    encoded = iter(_encode_files(root, model_id, files, device)) if files else iter(())
    for q in queries:
        if q.lstrip("-").isdigit():
            pos = np.searchsorted(row_ids, int(q))
            if pos >= len(row_ids) or row_ids[pos] != int(q):
                raise UserError(f"row id {q} is not in catalogue {catalogue!r}")
            out.append(codes[pos])
            own.append(int(q))
        else:
            out.append(next(encoded))
            own.append(None)
    return np.stack(out), own


def _read_files(paths: list[str]) -> list[bytes]:
    blobs = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{path!r} is neither a row id nor an image file")
        with open(path, "rb") as f:
            blobs.append(f.read())
    return blobs


def _encode_blobs(
    root: StorageRoot, model_id: str, blobs: list[bytes], device: str
) -> tuple[np.ndarray, np.ndarray]:
    """(codes, real-valued outputs) of encoded images, from one pass of the model."""
    from imaging.decode import decode_images
    from ml.checkpoint import model_from_checkpoint
    from ml.device import resolve_device
    from ml.encode import encode_outputs
    from storage.model_store import read_card, read_weights

    dev = resolve_device(device)
    model = model_from_checkpoint(read_card(root, model_id), read_weights(root, model_id), dev)
    try:
        images = decode_images(blobs, model.spec.img_size, model.spec.in_chans)
    except Exception as err:
        raise UserError(f"cannot decode query image: {err}") from err
    return encode_outputs(model, images, dev)


def _encode_files(root: StorageRoot, model_id: str, paths: list[str], device: str) -> np.ndarray:
    return _encode_blobs(root, model_id, _read_files(paths), device)[0]


def query_outputs(
    root: StorageRoot, catalogue: str, model_id: str, queries: list[str], device: str
) -> np.ndarray:
    """Real-valued outputs of the queries (row ids: their catalogue image; files: the file), one model pass."""
    from storage.images import encoded_images

    rows = [int(q) for q in queries if q.lstrip("-").isdigit()]
    blobs: dict[str, bytes] = {}
    if rows:
        table, _ = read_catalogue(root, catalogue, columns=["row_id", "image", "uri", "sha256"])
        pos = np.searchsorted(table["row_id"].to_numpy(), rows)
        blobs |= {str(r): b for r, b in zip(rows, encoded_images(table.take(pos)), strict=True)}
    files = [q for q in queries if not q.lstrip("-").isdigit()]
    blobs |= dict(zip(files, _read_files(files), strict=True))
    return _encode_blobs(root, model_id, [blobs[q] for q in queries], device)[1]


def candidate_table(root: StorageRoot, catalogue: str, model_id: str, scorer: str):
    """The stored codes (and, for ``stored``, the dequantised embeddings) by row_id, for ``ml.rerank``."""
    from ml.rerank import CandidateTable, dequantise

    row_ids, codes, meta = read_codes(root, catalogue, model_id)
    emb = None
    if scorer == "stored":
        from storage.embeddings import read_embeddings

        try:
            e_ids, data, scale, dtype = read_embeddings(root, catalogue, model_id)
        except FileNotFoundError as err:
            raise UserError(str(err)) from err
        if not np.array_equal(e_ids, row_ids):
            raise UserError(f"embeddings of {model_id} do not cover its codes; encode again")
        emb = dequantise(data, scale, dtype)
    return CandidateTable(row_ids, codes, meta.bits, emb)


def indexed_catalogues(root: StorageRoot) -> list[str]:
    """The catalogues of ``root`` with a published index (``indexes/<name>/CURRENT``), sorted."""
    return [name for name in root.names("indexes") if root.exists("indexes", name, "CURRENT")]


def pick_catalogue(root: StorageRoot, catalogue: str | None) -> str:
    """``catalogue`` if it has a published index, the only indexed one when none is named; else a ``UserError``
    saying which ones there are."""
    names = indexed_catalogues(root)
    listed = f" (catalogues with an index: {', '.join(names)})" if names else ""
    if catalogue is None and len(names) == 1:
        return names[0]
    if catalogue is None and names:
        raise UserError(
            f"{len(names)} catalogues have an index: {', '.join(names)} — choose one with --catalogue"
        )
    name = catalogue or "NAME"
    if catalogue is None or catalogue not in names:
        where = f"for catalogue {catalogue!r}" if catalogue else "for any catalogue"
        raise UserError(
            f"no index {where} in {root.uri} — run `vitrieve run --catalogue {name}` first{listed}"
        )
    return catalogue


def run_search(
    root_uri: str,
    catalogue: str | None,
    queries: list[str],
    k: int,
    device: str,
    as_json: bool,
    rerank: str = "none",
    oversample: int = 4,
    where: str | None = None,
) -> int:
    """Print the top-k of each query; deleted rows are hidden, ``where`` (SQL over the catalogue's columns) keeps
    only the rows it matches, and ``rerank`` re-scores the top ``oversample x k`` of that search."""
    root = StorageRoot(root_uri)
    catalogue = pick_catalogue(root, catalogue)
    model_id = current(root, catalogue)["model_id"]
    allow = None
    if where:
        try:
            allow = rows_where(root, catalogue, where)
        except ValueError as err:
            raise UserError(str(err)) from err
    index, _ = load_index(root, catalogue)
    codes, own = query_codes(root, catalogue, model_id, queries, device)
    stones = read_tombstones(root, catalogue)
    hidden = stones.deleted if stones else np.zeros(0, np.int64)
    if stones and stones.model_id == model_id:  # a row id query searches with its updated code
        for j, self_id in enumerate(own):
            at = np.searchsorted(stones.updated, self_id) if self_id is not None else len(stones.updated)
            if at < len(stones.updated) and stones.updated[at] == self_id:
                codes[j] = stones.codes[at]

    def search(c: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        return search_published(root, catalogue, c, r, allow, index)

    scores = None
    if rerank == "none":
        dist, ids = search(codes, k)
    else:
        from ml.rerank import rerank_search

        if oversample < 1:
            raise UserError(f"--oversample must be >= 1, got {oversample}")
        u = query_outputs(root, catalogue, model_id, queries, device)
        table = candidate_table(root, catalogue, model_id, rerank)
        ids, scores, dist = rerank_search(search, codes, u, k, oversample, rerank, table)
    table, info = read_catalogue(root, catalogue, columns=["row_id", "image_id", "labels", "in_database"])
    cat_rows = table["row_id"].to_numpy()
    labels = table["labels"].to_pylist()
    image_ids = table["image_id"].to_pylist()
    in_db = table["in_database"].to_numpy(zero_copy_only=False)
    results = []
    for q, (d, i, self_id) in enumerate(zip(dist, ids, own, strict=True)):
        d, i = list(map(int, d)), list(map(int, i))
        sc = [None] * len(i) if scores is None else [float(x) for x in scores[q]]
        shown = self_id is not None and (allow is None or self_id in allow) and self_id not in hidden
        if shown and in_db[int(np.searchsorted(cat_rows, self_id))]:
            # A database image searched by its own row id is listed first (distance 0), then the rest.
            rest = [(dd, rid, s) for dd, rid, s in zip(d, i, sc, strict=True) if rid != self_id]
            pairs = [(0, self_id, None if scores is None else 0.0)] + rest
            d, i, sc = [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]
        hits = []
        for dd, rid, s in zip(d[:k], i[:k], sc[:k], strict=True):
            if rid < 0:  # an approximate kind found fewer than k rows
                continue
            pos = int(np.searchsorted(cat_rows, rid))
            hits.append(
                {
                    "row_id": rid,
                    "distance": dd,
                    **({} if s is None else {"score": s}),
                    "image_id": image_ids[pos],
                    "labels": [info.label_names[x] for x in labels[pos]],
                }
            )
        results.append({"query": queries[q], "model_id": model_id, "rerank": rerank, "hits": hits})
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for res in results:
            print(f"query {res['query']}  (model {res['model_id']})")
            print(f"  {'rank':>4}  {'row_id':>8}  {'dist':>4}  {'image_id':<14} labels")
            for rank, h in enumerate(res["hits"], 1):
                print(
                    f"  {rank:>4}  {h['row_id']:>8}  {h['distance']:>4}  {h['image_id']:<14} {', '.join(h['labels'])}"
                )
    return 0
