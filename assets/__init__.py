"""Software-defined assets, asset checks and their resources: thin glue over ``ml/`` and ``storage/``."""
