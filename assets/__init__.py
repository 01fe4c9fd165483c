"""Software-defined assets and asset checks: thin glue over ``ml/`` and ``storage/``."""
