"""The tools the agent may call: plain typed functions, read-only, with docstrings the LLM reads.

Each takes a :class:`ToolContext` first; :func:`langchain_tools` binds it in a closure so the
LLM never sees it. The list is explicit: nothing registers itself on import.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import typing
from typing import Any, Callable

from tools.context import ToolContext
from tools.scores import predict_churn, predict_intent, score_risk, top_users
from tools.search import search_histories
from tools.segments import segment_summary
from tools.users import compare_users, get_user_history, get_user_profile

log = logging.getLogger(__name__)

TOOLS: list[Callable[..., dict[str, Any]]] = [
    get_user_profile,
    get_user_history,
    search_histories,
    predict_intent,
    predict_churn,
    score_risk,
    top_users,
    segment_summary,
    compare_users,
]
TOOL_NAMES: tuple[str, ...] = tuple(t.__name__ for t in TOOLS)
MAX_RESULT_CHARS = 2400  # a result is context for a small model: keep it bounded


def tool_by_name(name: str) -> Callable[..., dict[str, Any]]:
    for t in TOOLS:
        if t.__name__ == name:
            return t
    raise KeyError(f"no tool '{name}' (tools: {', '.join(TOOL_NAMES)})")


def result_json(result: dict[str, Any]) -> str:
    """A tool result as compact JSON, cut to MAX_RESULT_CHARS by dropping list tails if needed."""
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(text) <= MAX_RESULT_CHARS:
        return text
    trimmed = dict(result)
    for key in ("sessions", "users", "evidence", "factors"):
        while isinstance(trimmed.get(key), list) and len(trimmed[key]) > 1:
            trimmed[key] = trimmed[key][:-1]
            trimmed["truncated"] = True
            text = json.dumps(trimmed, ensure_ascii=False, separators=(",", ":"), default=str)
            if len(text) <= MAX_RESULT_CHARS:
                return text
    return text[:MAX_RESULT_CHARS]


def call_tool(ctx: ToolContext, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one tool by name; arguments the model got wrong come back as an error result."""
    func = tool_by_name(name)
    try:
        inspect.signature(func).bind(ctx, **args)
    except TypeError as exc:
        return {"error": f"bad arguments for {name}: {exc}", "hint": (func.__doc__ or "").split("\n")[0]}
    return func(ctx, **args)


def _bound(func: Callable[..., dict[str, Any]], ctx: ToolContext) -> Callable[..., str]:
    hints = typing.get_type_hints(func)  # resolved: the wrapper lives in another module's globals
    sig = inspect.signature(func)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in list(sig.parameters.values())[1:]]

    @functools.wraps(func)
    def run(**kwargs: Any) -> str:
        try:
            return result_json(func(ctx, **kwargs))
        except Exception as exc:  # a bug below the tool: logged in full, reported to the model, not hidden
            if ctx.raise_errors:
                raise
            log.exception("tool %s failed with %s", func.__name__, kwargs)
            return result_json({"error": f"{func.__name__} failed", "detail": f"{type(exc).__name__}: {exc}"[:300],
                                "hint": "this is a bug in ShopSight, not in the question; set SHOPSIGHT_RAISE_ERRORS=1 to see it"})

    run.__signature__ = sig.replace(parameters=params, return_annotation=str)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": str}
    del run.__wrapped__  # so inspection sees the signature without ctx
    return run


def langchain_tools(ctx: ToolContext) -> list:
    """TOOLS as LangChain StructuredTools with ``ctx`` bound and hidden from the model."""
    from langchain_core.tools import StructuredTool

    return [
        StructuredTool.from_function(_bound(f, ctx), name=f.__name__, parse_docstring=True, error_on_invalid_docstring=False)
        for f in TOOLS
    ]


__all__ = ["TOOLS", "TOOL_NAMES", "ToolContext", "call_tool", "langchain_tools", "result_json", "tool_by_name", *TOOL_NAMES]
