"""A real S3 endpoint on 127.0.0.1 for the tests: moto's threaded server, reached through s3fs.

The endpoint and credentials reach s3fs only through the standard environment variables."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Start moto's server on a free local port, point the AWS environment variables at it, yield its URL."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def new_bucket(name: str):
    """Create bucket ``name`` on the current endpoint; returns the s3fs filesystem."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir(name)
    return fs
