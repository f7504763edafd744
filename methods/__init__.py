"""Built-in distillation methods, one per module.

Importing this package imports every module in it, so a new method only needs a file here
with a class decorated by ``@register_method("name")``.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
