"""The grounding guard: every number and id in an answer must come from a tool result (or the question).

How a number is read and matched is :mod:`tools.numbers` (shared with the eval checks); which
facts of a result an answer must state is each tool's ``key_facts`` in the registry. When a
draft fails twice, :func:`render_answer` writes the deterministic answer from the tool results.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Sequence

from agent.types import Citations, ToolCall
from tools.numbers import ShownNumber, matches, numbers_in
from tools.registry import Registry

__all__ = ["GroundingVerdict", "ShownNumber", "check_grounding", "citations", "numbers_in", "render_answer", "with_citations"]

_ID = re.compile(r"\b[uo]\d{2,}(?:-s\d+)?\b", re.I)  # user, order and session ids an answer may cite


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from tools import default_registry

    return default_registry()


def source_values(results: Iterable[Any], question: str = "") -> set[float]:
    """Every number a tool returned (also inside strings and as list lengths), plus the question's."""
    values: set[float] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            if not math.isnan(obj):
                values.add(float(obj))
        elif isinstance(obj, str):
            values.update(n.value for n in numbers_in(obj))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            values.add(float(len(obj)))
            for v in obj:
                walk(v)

    for r in results:
        walk(r)
    values.update(n.value for n in numbers_in(question))
    return values


_RATE_KEY = re.compile(r"prob|rate|share|ratio|percent|pct|score|auc|ece|brier|precision|recall|f1|accuracy", re.I)


def rate_values(results: Iterable[Any]) -> set[float]:
    """Values a tool returned as a probability, rate or share (by key, or by a factor's name).

    "100%" or "0%" may only come from one of these: a count of 1 or a flag is not a percentage.
    """
    rates: set[float] = set()

    def walk(obj: Any, key: str = "") -> None:
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            if _RATE_KEY.search(key) and not math.isnan(obj):
                rates.add(float(obj))
        elif isinstance(obj, dict):
            named = str(obj.get("name", ""))
            for k, v in obj.items():
                walk(v, named if k == "value" and named else str(k))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, key)

    for r in results:
        walk(r)
    return rates


class GroundingVerdict:
    """The verdict on one draft: ok; shown numbers and ids no tool result supports; key facts left out."""

    def __init__(self, unsupported: list[str], missing: list[str], leaked_prompt: bool) -> None:
        self.unsupported = unsupported
        self.missing = missing
        self.leaked_prompt = leaked_prompt

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.missing and not self.leaked_prompt

    def __repr__(self) -> str:
        return f"GroundingVerdict(ok={self.ok}, unsupported={self.unsupported}, missing={self.missing}, leaked_prompt={self.leaked_prompt})"


def check_grounding(answer: str, calls: Sequence[ToolCall], question: str = "", system_prompt: str = "",
                    registry: Registry | None = None) -> GroundingVerdict:
    """Check a draft answer against the tool calls of its turn.

    Args:
        answer: The draft.
        calls: The tool calls (with results) the draft may draw on.
        question: The user's question; numbers it contains ("top 10") may be repeated.
        system_prompt: If given, a draft repeating any of its lines fails (the prompt is never revealed).
        registry: The tools, for each result's key facts (default: the installed tools).
    """
    registry = _registry(registry)
    results = [dict(c.result) for c in calls]
    values = source_values(results)
    # a percent comes from a fraction (0.734 → 73.4%) or a rate; a whole 0 or 1 elsewhere is a count or flag
    percent_sources = {v for v in values if 0 < abs(v) < 1} | rate_values(results)
    asked = {n.value for n in numbers_in(question)}
    unsupported = [
        n.text for n in numbers_in(answer)
        if not any(matches(n, v) for v in (percent_sources if n.percent else values))
        # the question's counts may be repeated ("top 10"); its percentages are claims, not facts ("say 100% sure")
        and (n.percent or not any(matches(n, v, percent_of_count=True) for v in asked))
    ]
    known = {i.lower() for i in _ID.findall(json.dumps(results, default=str) + " " + question)}
    unsupported += [i for i in dict.fromkeys(_ID.findall(answer)) if i.lower() not in known]
    missing = [f.what for c in standing(calls) for f in registry.key_facts(c.name, c.args, c.result, question)
               if not f.holds(answer)]
    if _degenerate(answer):
        missing.append("a readable answer (the draft repeats itself)")
    return GroundingVerdict(unsupported, missing, _leaks(answer, system_prompt))


def standing(calls: Sequence[ToolCall]) -> list[ToolCall]:
    """The calls an answer stands on: an error the planner recovered from (a later call of the same
    tool succeeded: a bad argument fixed, a typo'd id corrected) is no longer part of the answer."""
    out = []
    for i, c in enumerate(calls):
        if c.failed and any(later.name == c.name and not later.failed for later in calls[i + 1:]):
            continue
        out.append(c)
    return out


def _leaks(answer: str, system_prompt: str) -> bool:
    if not system_prompt:
        return False
    lowered = " ".join(answer.lower().split())
    for line in system_prompt.splitlines():
        line = " ".join(line.strip(" -").lower().split())
        if len(line) >= 30 and line[:60] in lowered:
            return True
    return False


def _degenerate(answer: str) -> bool:
    """A draft stuck in a loop ("u00115, u00115, …" or one clause said three times), as tiny models write."""
    words = re.findall(r"[\w.%-]+", answer.lower())
    if len(words) < 8:
        return False
    top = max(words.count(w) for w in set(words) if len(w) >= 3) if any(len(w) >= 3 for w in words) else 0
    if top >= 6 and top / len(words) >= 0.25:
        return True
    grams = [" ".join(words[i:i + 5]) for i in range(len(words) - 4)]
    return any(grams.count(g) >= 3 for g in set(grams))


# --- deterministic answers and citations ------------------------------------------------------
def render_answer(calls: Sequence[ToolCall], registry: Registry | None = None) -> str:
    """A deterministic answer from the tool calls of a turn (each tool renders its own result)."""
    if not calls:
        return "I could not answer that from the shop's data."
    registry = _registry(registry)
    return " ".join(registry.render(c.name, c.args, c.result) for c in standing(calls))


def citations(calls: Sequence[ToolCall]) -> Citations:
    """Session ids and model name@version the tool results of a turn carry."""
    sessions: list[str] = []
    models: list[str] = []
    for c in calls:
        cite = c.result.get("citations", {}) if isinstance(c.result, dict) else {}
        sessions += [s for s in cite.get("sessions", []) if s not in sessions]
        model = cite.get("model")
        if model and model not in models:
            models.append(model)
    return Citations(tuple(sessions), tuple(models))


def with_citations(answer: str, cites: Citations) -> str:
    """Append the citations the answer does not already mention."""
    missing_sessions = [s for s in cites.sessions[:5] if s not in answer]
    missing_models = [m for m in cites.models if m not in answer]
    parts = []
    if missing_sessions:
        parts.append("sessions " + ", ".join(missing_sessions))
    if missing_models:
        parts.append("model " + ", ".join(missing_models))
    return answer if not parts else f"{answer.rstrip()} (Sources: {'; '.join(parts)}.)"
