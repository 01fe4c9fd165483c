"""``vitrieve search``: row ids or image files -> top-k row ids, distances and labels from the published index."""

from __future__ import annotations

import json
import os

import numpy as np

from pipelines.cli.errors import UserError
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.fs import StorageRoot
from storage.index import current, load_index, search


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


def _encode_files(root: StorageRoot, model_id: str, paths: list[str], device: str) -> np.ndarray:
    from imaging.decode import decode_images
    from ml.checkpoint import model_from_checkpoint
    from ml.device import resolve_device
    from ml.encode import encode_images
    from storage.model_store import read_card, read_weights

    blobs = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{path!r} is neither a row id nor an image file")
        with open(path, "rb") as f:
            blobs.append(f.read())
    dev = resolve_device(device)
    model = model_from_checkpoint(read_card(root, model_id), read_weights(root, model_id), dev)
    try:
        images = decode_images(blobs, model.spec.img_size, model.spec.in_chans)
    except Exception as err:
        raise UserError(f"cannot decode query image: {err}") from err
    return encode_images(model, images, dev)


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
    root_uri: str, catalogue: str | None, queries: list[str], k: int, device: str, as_json: bool
) -> int:
    root = StorageRoot(root_uri)
    catalogue = pick_catalogue(root, catalogue)
    model_id = current(root, catalogue)["model_id"]
    index, _ = load_index(root, catalogue)
    codes, own = query_codes(root, catalogue, model_id, queries, device)
    dist, ids = search(index, codes, k)
    table, info = read_catalogue(root, catalogue, columns=["row_id", "image_id", "labels", "in_database"])
    cat_rows = table["row_id"].to_numpy()
    labels = table["labels"].to_pylist()
    image_ids = table["image_id"].to_pylist()
    in_db = table["in_database"].to_numpy(zero_copy_only=False)
    results = []
    for q, (d, i, self_id) in enumerate(zip(dist, ids, own, strict=True)):
        d, i = list(map(int, d)), list(map(int, i))
        if self_id is not None and in_db[int(np.searchsorted(cat_rows, self_id))]:
            # A database image searched by its own row id is listed first (distance 0), then the rest.
            pairs = [(0, self_id)] + [(dd, rid) for dd, rid in zip(d, i, strict=True) if rid != self_id]
            d, i = [p[0] for p in pairs], [p[1] for p in pairs]
        hits = []
        for dd, rid in zip(d[:k], i[:k], strict=True):
            pos = int(np.searchsorted(cat_rows, rid))
            hits.append(
                {
                    "row_id": rid,
                    "distance": dd,
                    "image_id": image_ids[pos],
                    "labels": [info.label_names[x] for x in labels[pos]],
                }
            )
        results.append({"query": queries[q], "model_id": model_id, "hits": hits})
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
