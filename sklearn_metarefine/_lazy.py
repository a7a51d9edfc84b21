"""Names of a package imported on first use (PEP 562)."""

import importlib
import sys


def lazy_attributes(package, sources):
    """The module ``__getattr__`` and ``__dir__`` of a package with lazy names.

    ``sources`` maps each name to the module, relative to ``package``, that
    defines it; the module is imported when the name is first looked up, and
    the name then stays in the package's namespace.
    """

    def __getattr__(name):
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(sources))

    return __getattr__, __dir__
