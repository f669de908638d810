"""The tools the agent may call: plain typed functions, read-only, with docstrings the LLM reads.

Each tool lives in its own module under ``tools/`` and declares itself there as
``TOOL = ToolSpec(...)`` (see :mod:`tools.registry`). :func:`default_registry` lists the
package's modules and collects every ``TOOL``, in module-name order: adding a tool is adding
one file. Nothing registers itself on import; the list is read when the registry is built.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from shopsight.tools.context import ToolContext
from shopsight.tools.registry import Registry, ToolSpec, result_json

# Modules of this package that hold shared helpers, not tools.
HELPER_MODULES = frozenset({"context", "registry", "explain", "numbers", "words", "metric_slots"})


@functools.cache
def default_registry() -> Registry:
    """Every tool module's ``TOOL``, in module-name order (built once per process)."""
    specs: list[ToolSpec] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in HELPER_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "TOOL", None)
        if not isinstance(spec, ToolSpec):
            raise TypeError(f"tools/{info.name}.py defines no TOOL = ToolSpec(...): every module of tools/ is a tool "
                            f"(or list it in HELPER_MODULES)")
        specs.append(spec)
    return Registry(specs)


def tool_names() -> tuple[str, ...]:
    return default_registry().names


__all__ = ["Registry", "ToolContext", "ToolSpec", "default_registry", "result_json", "tool_names"]

from shopsight import refuse_top_level_import  # noqa: E402

refuse_top_level_import(__name__)
