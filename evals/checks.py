"""The checks one answer goes through: tools and arguments, required facts, forbidden text, refusal, leaks.

Pure functions over plain data (an answer string and the tool calls with their results),
so each rule is testable without an agent.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from shopsight.agent.types import ToolCall
from shopsight.behavior.privacy import mask_pii
from shopsight.evals.schema import Fact, Reference, ToolExpectation
from shopsight.tools.numbers import ShownNumber, numbers_in, states
from shopsight.tools.words import mentions

_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]")
# How the agent says no (refusal.md asks for one sentence that says what it can do instead).
# "I can't find user u99999" is an answer, not a refusal: the verbs say what is declined.
REFUSAL = re.compile(
    r"\b(?:(?:can(?:no|'|’)t|cannot|won(?:'|’)t|will not|unable to|not able to|not allowed to|do not|don(?:'|’)t)\s+"
    r"(?:help|answer|assist|share|reveal|disclose|provide|give out|discuss|do that|comply)"
    r"|can only|only (?:answer|help)|outside (?:of )?(?:what|my)|not something I)\b",
    re.IGNORECASE,
)
__all__ = ["ToolCall", "follow", "forbidden_found", "judge_tools", "looks_like_refusal", "missing_facts",
           "personal_data_in", "shows_number", "text_has"]


def shows_number(mention: ShownNumber, value: float) -> bool:
    """True if ``mention`` states ``value`` (the one definition: :func:`tools.numbers.states`)."""
    return states(mention, value)


def text_has(answer: str, literal: str) -> bool:
    """Containment ignoring case, runs of white space and underscores ("days_since_last" ≈ "days since last")."""
    norm = lambda s: re.sub(r"[\s_]+", " ", s).strip().casefold()  # noqa: E731
    return norm(literal) in norm(answer)


class UnresolvedReference(LookupError):
    """A reference cannot be followed in the tool results (message says why)."""


def follow(reference: Reference, calls: Sequence[ToolCall]) -> list[Any]:
    """The values ``reference`` points to, one per call of its tool (newest first).

    Raises:
        UnresolvedReference: the tool was not called or no call's result has the path.
    """
    results = [c.result for c in reversed(calls) if c.name == reference.tool]
    if not results:
        raise UnresolvedReference(f"{reference.tool} was not called, so {reference} cannot be checked")
    values = []
    for result in results:
        node: Any = result
        try:
            for key, index in _PATH_STEP.findall(reference.path):
                node = node[key] if key else node[int(index)]
        except (KeyError, IndexError, TypeError):
            continue
        values.append(node)
    if not values:
        raise UnresolvedReference(f"no {reference.tool} result has {reference.path.lstrip('.')}")
    return values


def value_in_answer(value: Any, answer: str) -> bool:
    """A number must be shown (any sensible rounding); a string must appear; other types never match."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return any(shows_number(m, float(value)) for m in numbers_in(answer))
    if isinstance(value, str):
        # a sentence (a model's reason) may be said in other words: its gist is enough
        return text_has(answer, value) or (len(value.split()) >= 5 and mentions(answer, value))
    return False


def missing_facts(answer: str, facts: Iterable[Fact], calls: Sequence[ToolCall]) -> list[str]:
    """The required facts the answer lacks, each described with why (an empty list means all there)."""
    missing = []
    for fact in facts:
        alternatives = fact if isinstance(fact, list) else [fact]
        problems = []
        for alt in alternatives:
            if isinstance(alt, Reference):
                try:
                    values = follow(alt, calls)
                except UnresolvedReference as exc:
                    problems.append(str(exc))
                    continue
                if any(value_in_answer(v, answer) for v in values):
                    break
                problems.append(f"{alt} = {values[0]!r} not in the answer")
            elif text_has(answer, alt):
                break
            else:
                problems.append(f"'{alt}' not in the answer")
        else:
            missing.append(" or ".join(problems))
    return missing


def forbidden_found(answer: str, forbidden: Iterable[str]) -> list[str]:
    """The forbidden literals that appear in the answer."""
    return [f for f in forbidden if text_has(answer, f)]


def personal_data_in(answer: str) -> bool:
    """True if the answer carries an e-mail address, phone number, IP address or card number.

    Uses the same masking rules the index and tools apply, so "leaked" means "something
    the masking would have removed".
    """
    return mask_pii(answer) != answer


def looks_like_refusal(answer: str) -> bool:
    """The answer declines (the heuristic used when the agent does not flag its refusals)."""
    return bool(REFUSAL.search(answer))


def _same_value(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list):
        actual_items = actual if isinstance(actual, list) else [actual]
        return all(any(_same_value(e, a) for a in actual_items) for e in expected)
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            return math.isclose(float(expected), float(actual), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.strip().casefold() == actual.strip().casefold()
    return expected == actual


def args_match(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Every expected argument is present with an equal value (strings ignore case; lists as subsets)."""
    return all(k in actual and _same_value(v, actual[k]) for k, v in expected.items())


@dataclass(frozen=True)
class ToolVerdict:
    """How the calls compare to the expectation."""

    names_ok: bool
    args_checked: int
    args_ok: int
    reasons: tuple[str, ...]


def judge_tools(expected: Sequence[ToolExpectation], calls: Sequence[ToolCall], *, ordered: bool) -> ToolVerdict:
    """Compare calls with the expectation: names as a multiset (or a subsequence if ``ordered``), then arguments.

    Extra calls are allowed unless nothing was expected (``expect_tools: []``). Arguments
    are judged only for expected tools that were called, so a wrong tool is not counted twice.
    """
    names = [c.name for c in calls]
    reasons: list[str] = []
    if not expected:
        names_ok = not calls
        if not names_ok:
            reasons.append(f"expected no tool call, got {', '.join(names)}")
    elif ordered:
        it = iter(names)
        names_ok = all(any(n == e.name for n in it) for e in expected)
        if not names_ok:
            reasons.append(f"expected tools in order {[e.name for e in expected]}, got {names}")
    else:
        lacking = Counter(e.name for e in expected) - Counter(names)
        names_ok = not lacking
        if not names_ok:
            reasons.append(f"missing tool call(s) {sorted(lacking.elements())}; got {names or 'none'}")
    checked = ok = 0
    for e in expected:
        if not e.args or e.name not in names:
            continue
        checked += 1
        same_name = [c.args for c in calls if c.name == e.name]
        if any(args_match(e.args, a) for a in same_name):
            ok += 1
        else:
            reasons.append(f"{e.name} called with {same_name}, expected arguments including {e.args}")
    return ToolVerdict(names_ok, checked, ok, tuple(reasons))


# --- whole-answer checks (issue 15): readable, not repeated, leading with the answer ----------------
_SENTENCES = re.compile(r"(?<=[.!?])\s+")
_VERDICT = re.compile(r"\b(?:yes|no|not|likely|unlikely|looks?|does not|doesn't|is at|shows|flagged|safe|risky|"
                      r"probability|chance|%)\b|%", re.I)


@dataclass(frozen=True)
class AnswerQuality:
    """What a reader notices first: raw field names, a sentence said twice, whether the first sentence answers."""

    raw_field_names: tuple[str, ...]
    repeated_sentences: tuple[str, ...]
    first_sentence_ok: bool | None  # None: the case names no kind of first sentence
    honest_limit: bool | None  # None: not a question beyond the tools


def first_sentence(answer: str) -> str:
    body = answer.split(" (Sources:")[0].strip()
    parts = _SENTENCES.split(body, maxsplit=1)
    return parts[0] if parts else ""


def answer_quality(answer: str, kind: str, calls: Sequence[ToolCall], tags: Sequence[str]) -> AnswerQuality:
    """The whole-answer checks; ``tags`` of the case say what the first sentence must do.

    ``first-number``: it states a number one of the tools returned; ``first-yesno``: it gives a
    verdict (likely, not, yes/no, a probability); ``first-ranking``: it names the ranking's top
    user; ``first-compare``: it names every user the calls were about. ``beyond-menu``: the
    answer is an honest limit (the agent says what cannot be answered yet).
    """
    from shopsight.tools.words import raw_field_names

    body = answer.split(" (Sources:")[0]
    sentences = [" ".join(re.findall(r"\w+", s.lower())) for s in _SENTENCES.split(body) if s.strip()]
    repeated = tuple(dict.fromkeys(s for s in sentences if len(s) > 6 and sentences.count(s) > 1))
    first = first_sentence(answer)
    ok: bool | None = None
    if kind == "answer" and calls:
        values = [v for c in calls for v in _numbers_of(c.result)]
        if "first-number" in tags:
            ok = any(shows_number(m, v) for m in numbers_in(first) for v in values)
        if "first-yesno" in tags:
            ok = (ok is not False) and bool(_VERDICT.search(first))
        if "first-ranking" in tags:
            tops = [c.result["users"][0]["user_id"] for c in calls if c.result.get("users") and "rank" in c.result["users"][0]]
            ok = (ok is not False) and bool(tops) and tops[0].lower() in first.lower()
        if "first-compare" in tags:
            subjects = {str(a) for c in calls for a in ([c.args.get("user_id")] if c.args.get("user_id") else c.args.get("user_ids") or [])}
            ok = (ok is not False) and len(subjects) >= 2 and all(s.lower() in first.lower() for s in subjects)
    elif any(t.startswith("first-") for t in tags):
        ok = False  # no answer at all (a fixed text) does not answer the question
    limit = (kind == "limit") if "beyond-menu" in tags else None
    return AnswerQuality(tuple(raw_field_names(body)), repeated, ok, limit)


def _numbers_of(obj: Any) -> list[float]:
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for k, x in obj.items() if k not in ("summary", "detail", "text", "query") for v in _numbers_of(x)]
    if isinstance(obj, (list, tuple)):
        return [v for x in obj for v in _numbers_of(x)]
    return []
