"""Benchmark drivers (no Dagster): ``search`` and ``quality`` behind ``vitrieve bench``, ``training`` and
``models`` (``python -m bench.training`` / ``python -m bench.models``) for training throughput."""
