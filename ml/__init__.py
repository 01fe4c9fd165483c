"""Models, losses, training, encoding and retrieval metrics (plain torch/timm/numpy; no Dagster)."""
