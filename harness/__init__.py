"""ddbench harness: unroll engine, registries, data, models, evaluation, runner, records, tables."""

__version__ = "0.1.0"
