"""Catalogues are dynamic partitions: one partition key per catalogue name."""

import dagster as dg

catalogues = dg.DynamicPartitionsDefinition(name="catalogues")
