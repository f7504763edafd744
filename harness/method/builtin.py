"""ddbench's built-in methods: the ``methods`` folder beside the running ``harness`` package,
imported under this module's name (``harness.method.builtin.rat_bptt``).

``methods`` is a generic name: a user's own ``methods`` package earlier on ``sys.path`` (the
current folder comes first for ``python -c`` and pytest) would be what ``import methods`` finds.
So the method registry never imports ``methods`` by name. This module is that folder's package
(its ``__path__`` is the folder): the registry walks it like every other built-in package, and
its modules import, and unpickle (Ray ships method configs to its workers), under this name in
any process that can import ``harness``. ``import methods`` of ddbench's own folder gives the
same module objects (see ``methods/__init__.py``), so no method is ever registered twice.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parents[2] / "methods"

if not (FOLDER / "__init__.py").is_file():
    raise ImportError(f"{FOLDER}: ddbench's built-in methods folder is missing (reinstall ddbench)")

__path__ = [str(FOLDER)]
