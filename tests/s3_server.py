"""A real S3 endpoint on 127.0.0.1 for the tests: moto's threaded server, reached through s3fs.

The endpoint and credentials reach s3fs only through the standard environment variables."""

from __future__ import annotations

from bench.s3_local import local_s3

moto_s3 = local_s3  # start moto on 127.0.0.1, point the AWS variables at it, yield its URL


def new_bucket(name: str):
    """Create bucket ``name`` on the current endpoint; returns the s3fs filesystem."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir(name)
    return fs
