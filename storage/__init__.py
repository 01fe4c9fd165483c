"""Storage: catalogues, model artifacts, packed codes, FAISS indexes, DuckDB diagnostics (no Dagster)."""
