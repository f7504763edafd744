"""ddbench harness: unroll engine, registries, data, models, evaluation, runner, records, tables."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ddbench")
except PackageNotFoundError:  # run from a source checkout that is not installed
    __version__ = "0+unknown"
