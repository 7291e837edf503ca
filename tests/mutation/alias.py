"""A pytest plugin for ``make mutation`` (``-p tests.mutation.alias``, set in ``[tool.mutmut]``):
under mutmut, ``gradbook_service.X`` is the mutated ``service.X`` of ``mutants/``.

mutmut 3 copies ``service/`` to ``mutants/service/`` and names each mutant after its file's
path (``service.inputs.x_…``); a mutant is switched on only in a module of that name. The tests
import ``gradbook_service`` (``service/`` installed under that name), which the editable install
resolves to the original ``service/``: mutmut's mutants of ``service/`` were never run, and every
one counted as "no tests". This plugin, loaded before any test module, makes each
``gradbook_service.X`` the very module ``service.X`` imported from ``mutants/`` (one module under
two names, so its functions keep ``__module__ == "service.X"``, as mutmut expects).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

INSTALLED, SOURCE = "gradbook_service", "service"


class Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``gradbook_service[.X]`` as the already imported ``service[.X]``."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != INSTALLED and not fullname.startswith(INSTALLED + "."):
            return None
        module = importlib.import_module(SOURCE + fullname.removeprefix(INSTALLED))
        return importlib.machinery.ModuleSpec(fullname, self,
                                              is_package=hasattr(module, "__path__"))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(SOURCE + spec.name.removeprefix(INSTALLED))

    def exec_module(self, module: ModuleType) -> None:
        """Nothing: the module ran when it was imported under its own name."""


if not any(isinstance(finder, Alias) for finder in sys.meta_path):
    sys.meta_path.insert(0, Alias())
