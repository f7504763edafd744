"""The bottom layer: what every other layer may use, and which uses nothing of ddbench.

Owns the user-facing errors (:mod:`.errors`), the one registry type (:mod:`.registry`), the
config-error helpers shared by every pydantic config (:mod:`.config`), the table of random
streams (:mod:`.rng`), the one atomic file writer and the cache folder (:mod:`.io`), contexts
that change process-wide settings and restore them (:mod:`.process`) and what a record says
about where it came from (:mod:`.provenance`).

May import: the standard library, numpy, pydantic, torch (lazily where a module is also used
by light code). Never another ``harness`` sub-package.
"""
