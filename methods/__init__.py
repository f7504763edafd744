"""Built-in distillation methods, one per module: a new method is one file here with a class
decorated by ``@register_method("name")`` (there is no list to edit).

The method registry loads this folder by its path, as :mod:`harness.method.builtin`, so that a
user's own package named ``methods`` cannot hide it. Imported under its own name (``from
methods.dm import DMConfig``), this package hands out those same modules: ``methods.dm`` *is*
``harness.method.builtin.dm``, so no method is registered twice.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

import harness.method.builtin as _builtin

if Path(__file__).resolve().parent != _builtin.FOLDER:
    raise ImportError(f"{Path(__file__).resolve().parent} is not the methods folder of the running harness package "
                      f"({_builtin.FOLDER}): put one ddbench checkout on sys.path")

for _info in pkgutil.iter_modules(__path__):
    sys.modules[f"{__name__}.{_info.name}"] = globals()[_info.name] = importlib.import_module(
        f"{_builtin.__name__}.{_info.name}")
