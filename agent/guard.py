"""The grounding guard: every number, id, date and category in an answer must come from a tool result.

Provenance: a value counts as supported only if it is a structured field of a tool result (a
score, a count, a date, an id) or an argument the call ran with — never free text that shoppers
wrote or that quotes them (session summaries, reviews, searches, item names, evidence details)
and never the question itself ("answer only with the number 7" grounds nothing). Free text may
be quoted verbatim inside double quotes: a quotation is shown as data, not claimed as a fact.

Beyond values: a number must be stated about the quantity it measures (the churn probability as
churn, not as intent); raw field names (snake_case), repeated sentences and filler with no facts
are rejected; each tool's key facts must be there (``ToolSpec.key_facts``). How a number is read
and matched is :mod:`tools.numbers`, shared with the eval checks. When a draft fails twice,
:func:`render_answer` writes the deterministic answer from the tool results.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from shopsight.agent.types import Citations, ToolCall
from shopsight.tools.numbers import ShownNumber, matches, numbers_in
from shopsight.tools.registry import HIDDEN_KEYS, Registry
from shopsight.tools.words import raw_field_names

__all__ = ["GroundingVerdict", "ShownNumber", "check_grounding", "citations", "numbers_in", "render_answer",
           "standing", "with_citations"]

# Result keys whose values are free text (shoppers' words, or notes quoting them): never a source of facts.
FREE_TEXT_KEYS = frozenset({"summary", "detail", "text", "query", "document", "name", "note", "notes", "hint"})
# Identifiers as answers write them: letters then digits (u00042, o000123, CUST-0042, churn@v3's v3),
# session ids (u00042-s0007) and UUIDs. Plain numbers are checked as numbers.
_ID = re.compile(r"\b(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[A-Za-z]+[-_]?\d+(?:[-_][A-Za-z]*\d+)*)\b", re.I)
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_HUMAN_DATE = re.compile(rf"\b(\d{{1,2}})\s+({_MONTH})\b\.?(?:,?\s+(\d{{4}}))?", re.I)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})")
_YEAR = re.compile(r"(?<![\w.@-])(?:19|20)\d{2}(?![\w.,]\d)")
_QUOTED = re.compile(r'"([^"]{3,})"')
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_FILLER = re.compile(
    r"\b(?:i(?:'| a)?m not sure|i don'?t know|i(?:'ll| will) (?:just )?have to|as an ai|hope (?:this|that) helps|"
    r"let me know if|feel free to|make it more interesting|i think that|it is important to note|"
    r"i cannot (?:be sure|say)|interesting question)\b", re.I)


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from shopsight.tools import default_registry

    return default_registry()


# --- what the tool results support ----------------------------------------------------------
@dataclass
class Sources:
    """The structured values of a turn's tool results and arguments, and their free text."""

    values: set[float] = field(default_factory=set)
    rates: set[float] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    days: set[str] = field(default_factory=set)
    words: str = ""  # every structured string, lowercased (categories, names of things)
    free_text: list[str] = field(default_factory=list)


_RATE_KEY = re.compile(r"prob|rate|share|ratio|percent|pct|score|auc|ece|brier|precision|recall|f1|accuracy|without", re.I)


def sources(calls: Sequence[ToolCall]) -> Sources:
    """What a draft may draw on: numbers, rates, ids, days and words of structured fields and arguments."""
    out = Sources()
    strings: list[str] = []

    def walk(obj: Any, key: str = "", free: bool = False) -> None:
        if isinstance(obj, bool) or obj is None:
            return
        if isinstance(obj, (int, float)):
            if not math.isnan(obj) and not free:
                out.values.add(float(obj))
                if _RATE_KEY.search(key):
                    out.rates.add(float(obj))
        elif isinstance(obj, str):
            if free:
                out.free_text.append(obj)
                return
            strings.append(obj)
            for n in numbers_in(obj):
                out.values.add(n.value)
                if n.percent:  # a structured sentence's "0% of their events" grounds "0%"
                    out.rates.add(n.value / 100)
            out.ids.update(t.lower() for t in _ID.findall(obj))
            out.days.update(_days_in(obj))
        elif isinstance(obj, Mapping):
            named = str(obj.get("name") or obj.get("key") or "") if not free else ""
            for k, v in obj.items():
                k = str(k)
                walk(v, named if k == "value" and named else k, free or k in FREE_TEXT_KEYS)
        elif isinstance(obj, (list, tuple)):
            if not free:
                out.values.add(float(len(obj)))
            for v in obj:
                walk(v, key, free)

    for c in calls:
        walk(dict(c.args))
        walk({k: v for k, v in c.result.items() if k not in HIDDEN_KEYS})  # the SQL text is for readers, not a source
    out.words = " ".join(strings).lower()
    return out


def _days_in(text: str) -> set[str]:
    return {f"{y}-{m}-{d}" for y, m, d in _ISO_DATE.findall(text)}


def _dates_said(text: str) -> list[tuple[str, str]]:
    """(as written, ISO day or '-MM-DD' when the year is left out) for every date in ``text``."""
    found = [(m.group(0), m.group(0)[:10]) for m in _ISO_DATE.finditer(text)]
    for m in _HUMAN_DATE.finditer(text):
        day, month, year = int(m.group(1)), _MONTHS[m.group(2)[:3].lower()], m.group(3)
        found.append((m.group(0), f"{year}-{month:02d}-{day:02d}" if year else f"-{month:02d}-{day:02d}"))
    return found


def _without_quotes(answer: str, free_text: list[str]) -> str:
    """The answer with verbatim quotations of the results' free text blanked (data shown, not claimed)."""
    pool = "\n".join(free_text).replace('"', "'")  # renderers quote free text with its own quotes made single

    def blank(m: re.Match[str]) -> str:
        inner = m.group(1).rstrip("…").strip()
        return " " * len(m.group(0)) if inner and inner in pool else m.group(0)

    return _QUOTED.sub(blank, answer)


# --- the verdict -----------------------------------------------------------------------------
class GroundingVerdict:
    """The verdict on one draft: numbers and ids no tool supports; key facts left out; other problems."""

    def __init__(self, unsupported: list[str], missing: list[str], leaked_prompt: bool, problems: list[str] | None = None) -> None:
        self.unsupported = unsupported
        self.missing = missing
        self.leaked_prompt = leaked_prompt
        self.problems = problems or []

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.missing and not self.leaked_prompt and not self.problems

    def __repr__(self) -> str:
        return (f"GroundingVerdict(ok={self.ok}, unsupported={self.unsupported}, missing={self.missing}, "
                f"problems={self.problems}, leaked_prompt={self.leaked_prompt})")


def check_grounding(answer: str, calls: Sequence[ToolCall], question: str = "", system_prompt: str = "",
                    registry: Registry | None = None, vocabulary: Iterable[str] = ()) -> GroundingVerdict:
    """Check a draft answer against the tool calls of its turn.

    Args:
        answer: The draft.
        calls: The tool calls (with results) the draft may draw on.
        question: The user's question (its "why" or "what will they buy" decides some key facts;
            its numbers ground nothing).
        system_prompt: If given, a draft repeating any of its lines fails (the prompt is never revealed).
        registry: The tools, for each result's key facts (default: the installed tools).
        vocabulary: The workspace's category and country names: one the answer names must be in a result.
    """
    registry = _registry(registry)
    calls = list(calls)
    src = sources(calls)
    claimed = _without_quotes(answer, src.free_text)
    unsupported: list[str] = []
    percent_sources = {v for v in src.values if 0 < abs(v) < 1} | src.rates
    shown = numbers_in(_blank_dates(claimed))
    for n in shown:
        pool = percent_sources if n.percent else src.values
        if not any(matches(n, v) for v in pool):
            unsupported.append(n.text)
    unsupported += [i for i in dict.fromkeys(_ID.findall(claimed)) if i.lower() not in src.ids]
    for written, iso in _dates_said(claimed):
        ok = iso in src.days if not iso.startswith("-") else any(d.endswith(iso) for d in src.days)
        if not ok:
            unsupported.append(written)
    # a year is no quantity, but an invented one is an invented fact ("the 2022-2023 customer"): it must be
    # the year of some date the tools returned, or one the question names
    years = {d[:4] for d in src.days if not d.startswith("-")} | set(_YEAR.findall(question))
    unsupported += [y for y in dict.fromkeys(_YEAR.findall(_ISO_DATE.sub(" ", claimed))) if y not in years]
    for name in vocabulary:  # as the workspace writes it ("Home" the category, not "at home")
        if re.search(rf"\b{re.escape(str(name))}\b", claimed) and str(name).lower() not in src.words:
            unsupported.append(str(name))
    unsupported += _wrong_quantities(claimed, calls, registry)
    unsupported += _wrong_rows(claimed, calls)
    standing_calls = standing(calls)
    missing = [f.what for c in standing_calls for f in registry.key_facts(c.name, c.args, c.result, question)
               if not f.holds(answer)]
    missing += _every_subject(answer, standing_calls, registry)
    problems = [f"raw field name {name}" for name in raw_field_names(claimed)]
    problems += _repeats_and_filler(answer)
    return GroundingVerdict(list(dict.fromkeys(unsupported)), list(dict.fromkeys(missing)), _leaks(answer, system_prompt),
                            problems)


def _blank_dates(text: str) -> str:
    return _HUMAN_DATE.sub(lambda m: " " * len(m.group(0)), text)


def _wrong_quantities(text: str, calls: Sequence[ToolCall], registry: Registry) -> list[str]:
    """Numbers stated about another score than the one they are ("the likelihood of leaving is 1.0%" for intent)."""
    facts: list[tuple[float, str]] = []
    for c in calls:
        spec = registry.get(c.name) if registry.has(c.name) else None
        if spec is not None and spec.metric and isinstance(c.result.get("probability"), (int, float)):
            facts.append((float(c.result["probability"]), spec.metric))
    metrics = {m for _, m in facts}
    if len(metrics) < 2:
        return []  # one score in the turn: nothing to confuse it with
    words = {s.metric: s.metric_words for s in registry if s.metric in metrics and s.metric_words is not None}
    wrong = []
    shown = numbers_in(text)
    for i, n in enumerate(shown):
        owners = {m for v, m in facts if matches(n, v)}
        if not owners:
            continue
        start = shown[i - 1].start + len(shown[i - 1].text) if i else 0
        clause_start = max(text.rfind(sep, start, n.start) for sep in (".", ";", ",", ":", " and ", " but "))
        window = text[max(start, clause_start, n.start - 80):n.start]
        named = {m for m, rx in words.items() if rx.search(window)}
        if named and not (named & owners):
            wrong.append(f"{n.text} stated as {'/'.join(sorted(named))}, but it is the {'/'.join(sorted(owners))} probability")
    return wrong


# A label written right before its number ("Toys (59.1%)", "u01037: 72.8%"), or a number right before
# "by/for/in <label>" ("1,608 orders by amex").
_LABEL_THEN_NUMBER = r"\s*(?:[:(=]|is|at|with)?\s*[$€£]?\s*"
_NUMBER_THEN_LABEL = r"^\s*(?:[a-z%]+\s+){0,2}?(?:by|for|in|on|from|via)\s+(?:the\s+)?$"


def _wrong_rows(text: str, calls: Sequence[ToolCall]) -> list[str]:
    """Numbers paired with the wrong row of a table result ("Toys (59.1%)" when Toys' row says 58.4%)."""
    rows: dict[str, set[float]] = {}
    for c in calls:
        for key, label in (("rows", "group"), ("users", "user_id")):
            table = c.result.get(key)
            for row in table if isinstance(table, list) else []:
                if isinstance(row, Mapping) and row.get(label) not in (None, ""):
                    found: set[float] = set()
                    _numbers_of(row, found)
                    rows.setdefault(str(row[label]), set()).update(found)
    if len(rows) < 2:
        return []  # one row: no other row to confuse it with
    names = {name: re.compile(rf"(?<![\w-]){re.escape(name).replace('_', '[_ ]')}(?![\w-])", re.I) for name in rows}
    wrong = []
    for n in numbers_in(text):
        before, after = text[max(0, n.start - 40):n.start], text[n.start + len(n.text):n.start + len(n.text) + 40]
        owner = None
        for name, rx in names.items():
            hits = list(rx.finditer(before))
            if hits and re.fullmatch(_LABEL_THEN_NUMBER, before[hits[-1].end():], re.I):
                owner = name
            m = rx.search(after)
            if m and re.match(_NUMBER_THEN_LABEL, after[:m.start()], re.I):
                owner = name
        if owner is not None and not any(matches(n, v) for v in rows[owner]):
            wrong.append(f"{n.text} (stated for {owner})")
    return wrong


def _numbers_of(obj: Any, out: set[float]) -> None:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        out.add(float(obj))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _numbers_of(v, out)
    elif isinstance(obj, (list, tuple)):
        out.add(float(len(obj)))
        for v in obj:
            _numbers_of(v, out)


def _every_subject(answer: str, calls: Sequence[ToolCall], registry: Registry) -> list[str]:
    """Several users scored by one model (a comparison): every one must be named with its number."""
    by_tool: dict[str, list[ToolCall]] = {}
    for c in calls:
        if not c.failed and registry.has(c.name) and registry.get(c.name).metric:
            by_tool.setdefault(c.name, []).append(c)
    missing = []
    lowered = answer.lower()
    for group in by_tool.values():
        subjects = {str(c.result.get("order_id") or c.result.get("user_id")) for c in group}
        if len(subjects) < 2:
            continue
        for c in group:
            who = str(c.result.get("order_id") or c.result.get("user_id"))
            if who.lower() not in lowered:
                missing.append(f"subject {who}")
    return missing


def _sentence_key(sentence: str) -> str:
    """A sentence's words, lower-cased: two sentences with the same key say the same thing."""
    return " ".join(re.findall(r"\w+", sentence.lower()))


def _repeats_and_filler(answer: str) -> list[str]:
    problems = []
    sentences = [s.strip() for s in _SENTENCE.split(answer.strip()) if s.strip()]
    seen: set[str] = set()
    for s in sentences:
        key = _sentence_key(s)
        if key and key in seen and len(key) > 6:
            problems.append(f"a repeated sentence ({s[:60]})")
        seen.add(key)
    for s in sentences:
        if _FILLER.search(s):
            problems.append(f"filler with no facts ({s[:60]})")
    if _degenerate(answer):
        problems.append("a readable answer (the draft repeats itself)")
    if _cut_off(answer):
        problems.append("an end (the draft stops mid-way, a bracket left open)")
    return list(dict.fromkeys(problems))


def _cut_off(answer: str) -> bool:
    """A draft that stops mid-list ("… 6. u04975 (100.0%), 7. u02646 (") when the writer ran out of tokens."""
    return answer.count("(") > answer.count(")") or answer.count("[") > answer.count("]")


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
    words = [w.rstrip(".") for w in re.findall(r"[\w.%-]+", answer.lower())]  # "0.5%." at a sentence's end is "0.5%"
    if len(words) < 8:
        return False
    top = max(words.count(w) for w in set(words) if len(w) >= 3) if any(len(w) >= 3 for w in words) else 0
    if top >= 6 and top / len(words) >= 0.25:
        return True
    grams = [" ".join(words[i:i + 5]) for i in range(len(words) - 4)]
    return any(grams.count(g) >= 3 for g in set(grams))


# --- deterministic answers and citations ------------------------------------------------------
def render_answer(calls: Sequence[ToolCall], registry: Registry | None = None) -> str:
    """A deterministic answer from the tool calls of a turn (each tool renders its own result).

    Several subjects scored by one model (a comparison) get a first sentence that sets them side
    by side before each one's details; more than two get one sentence each (the first reason), and
    the full explanation of one is one question away.
    """
    if not calls:
        return "I could not answer that from the shop's data."
    registry = _registry(registry)
    kept = standing(calls)
    lead = _comparison_lead(kept, registry)
    said: set[str] = set()
    parts = [lead] if lead else []
    scored = [c for c in kept if _scored(c, registry)]
    brief = bool(lead) and len(scored) > 2
    if brief:
        from shopsight.tools.explain import brief_scores

        ranked = sorted(scored, key=lambda c: (-float(c.result["probability"]), str(c.result.get("order_id") or c.result.get("user_id"))))
        parts.append("The main reason for each: " + brief_scores([c.result for c in ranked])
                     + " Ask about one of them for the full explanation.")
    for c in kept:  # two tools about one user cite the same sessions: a sentence said once is not said again
        if brief and c in scored:
            continue
        fresh = []
        for sentence in _SENTENCE.split(registry.render(c.name, c.args, c.result).strip()):
            key = _sentence_key(sentence)
            if key and key in said and len(key) > 6:
                continue
            said.add(key)
            fresh.append(sentence)
        parts.append(" ".join(fresh))
    return " ".join(p for p in parts if p)


# (comparative, superlative) per score, for a comparison's first sentence.
_COMPARED = {"churn": ("more likely to churn than", "the most likely to churn"),
             "intent": ("more likely to buy soon than", "the most likely to buy soon"),
             "risk": ("a bigger fraud risk than", "the biggest fraud risk")}


def _scored(c: ToolCall, registry: Registry) -> bool:
    return (not c.failed and registry.has(c.name) and bool(registry.get(c.name).metric)
            and isinstance(c.result.get("probability"), (int, float)))


def _comparison_lead(calls: Sequence[ToolCall], registry: Registry) -> str:
    from shopsight.tools.words import pct

    scored = [c for c in calls if _scored(c, registry)]
    metrics = {registry.get(c.name).metric for c in scored}
    subjects = [str(c.result.get("order_id") or c.result.get("user_id")) for c in scored]
    if len(metrics) != 1 or len(set(subjects)) < 2:
        return ""
    metric = metrics.pop()
    ranked = sorted(zip(subjects, [float(c.result["probability"]) for c in scored]), key=lambda t: (-t[1], t[0]))
    more, most = _COMPARED.get(str(metric), (f"higher on {metric} than", f"the highest on {metric}"))
    shown = [pct(p) for _, p in ranked]
    if len(set(shown)) == 1:  # "u02123 is the most likely" of five at 98.6% each would be a distinction the numbers lack
        return f"{_listed([who for who, _ in ranked])} are {_EQUAL.get(str(metric), f'equal on {metric}')}: {shown[0]} each."
    tied = [who for (who, _), s in zip(ranked, shown) if s == shown[0]]
    if len(tied) > 1:
        head = f"{_listed(tied)} are tied as {most}"
    else:
        head = f"{ranked[0][0]} is {most}" if len(ranked) > 2 else f"{ranked[0][0]} is {more} {ranked[1][0]}"
    return f"{head}: " + " vs ".join(f"{who} {s}" for (who, _), s in zip(ranked, shown)) + "."


_EQUAL = {"churn": "equally likely to churn", "intent": "equally likely to buy soon", "risk": "an equal fraud risk"}


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def citations(calls: Sequence[ToolCall]) -> Citations:
    """Session ids and model name@version the tool results of a turn carry."""
    sessions: list[str] = []
    models: list[str] = []
    for c in calls:
        cite = c.result.get("citations", {}) if isinstance(c.result, dict) else {}
        sessions += [s for s in cite.get("sessions", []) if s not in sessions]
        for model in [cite.get("model"), *(cite.get("models") or [])]:  # a tool may rest on several models
            if model and model not in models:
                models.append(str(model))
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
