"""Run a question set against an answerer (the agent, the set's oracle, or a fake in tests) and score every answer.

The runner knows the agent only through :class:`Answerer`: ``ask(question, conversation_id)``
returning an :class:`agent.types.Answer`. Faithfulness and system-prompt leaks are judged by
the agent's own grounding guard (:func:`agent.guard.check_grounding`), so there is one
definition of "a number that came from a tool".
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol, Sequence

from shopsight.agent.guard import check_grounding
from shopsight.agent.types import Answer, ToolCall
from shopsight.behavior.workspace import WorkspaceError
from shopsight.evals.checks import answer_quality, forbidden_found, judge_tools, looks_like_refusal, missing_facts, personal_data_in
from shopsight.evals.roles import RoleResolver
from shopsight.evals.schema import PLACEHOLDER, EvalCase, EvalSet, Turn


class Answerer(Protocol):
    """Anything that answers a question within a conversation (the agent, the oracle, or a fake)."""

    def ask(self, question: str, conversation_id: str) -> Answer:
        ...


#: (answer, tool calls, question, system prompt) → a verdict with ``unsupported`` numbers and
#: ``leaked_prompt``. The default everywhere is :func:`agent.guard.check_grounding`; the seam
#: exists so a new guard can be compared with the old one on the same answers.
GroundingCheck = Callable[[str, Sequence[ToolCall], str, str], Any]
#: (cases done, cases in all, id of the case just done) → None.
Progress = Callable[[int, int, str], None]


@dataclass
class TurnResult:
    """One question's answer and every check on it."""

    question: str
    answer: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    latency_s: float = 0.0
    tokens: int | None = None
    tools_checked: bool = False
    tools_ok: bool = True
    args_checked: int = 0
    args_ok: int = 0
    facts_total: int = 0
    facts_missing: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    ungrounded: list[str] | None = None
    expect_refusal: bool | None = False
    refused: bool = False
    personal_data: bool = False
    prompt_leak: bool = False
    kind: str = "answer"
    guard_outcome: str = "accepted"  # accepted, rewritten or replaced (the agent's guard)
    main_tool: str | None = None
    raw_field_names: list[str] = field(default_factory=list)
    repeated_sentences: list[str] = field(default_factory=list)
    first_sentence_ok: bool | None = None
    honest_limit: bool | None = None
    key_facts_total: int = 0
    key_facts_missing: list[str] = field(default_factory=list)
    error: str | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons


@dataclass
class CaseResult:
    """One case: its turns, the roles it resolved, and whether all turns passed."""

    id: str
    tags: list[str]
    given: dict[str, str]
    turns: list[TurnResult]
    reasons: list[str] = field(default_factory=list)
    answered_by: dict[str, Any] = field(default_factory=dict)  # backend, model, prompt_version

    @property
    def passed(self) -> bool:
        return not self.reasons and all(t.passed for t in self.turns)

    def all_reasons(self) -> list[str]:
        out = list(self.reasons)
        for i, t in enumerate(self.turns, 1):
            prefix = f"turn {i}: " if len(self.turns) > 1 else ""
            out.extend(prefix + r for r in t.reasons)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tags": self.tags,
            "given": self.given,
            "passed": self.passed,
            "reasons": self.all_reasons(),
            "turns": [asdict(t) | {"passed": t.passed} for t in self.turns],
        }


@dataclass
class EvalRun:
    """A whole run: what was run against what, the per-case results and the totals."""

    set_name: str
    run_id: str
    started: str
    meta: dict[str, Any]
    cases: list[CaseResult]
    totals: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "set": self.set_name,
            "run_id": self.run_id,
            "started": self.started,
            "meta": self.meta,
            "totals": self.totals,
            "cases": [c.to_dict() for c in self.cases],
        }


def bind(turn: Turn, values: Mapping[str, str]) -> Turn:
    """The turn with every ``{name}`` replaced by its resolved value."""

    def sub(node: Any) -> Any:
        if isinstance(node, str):
            return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), node)
        if isinstance(node, list):
            return [sub(x) for x in node]
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        return node

    return Turn.model_validate(sub(turn.model_dump(mode="python")))


def judge_turn(
    turn: Turn,
    reply: Answer,
    *,
    tags: Sequence[str] = (),
    earlier: Sequence[ToolCall] = (),
    grounding: GroundingCheck = check_grounding,
    system_prompt: str | None = None,
) -> TurnResult:
    """Every check of one answer against its turn's expectations (pure: no I/O).

    ``earlier`` holds the tool calls of the conversation's previous turns: a follow-up may
    repeat their facts and numbers without calling the tools again.
    """
    known = [*earlier, *reply.tool_calls]
    r = TurnResult(question=turn.question, answer=reply.answer, tokens=reply.tokens, expect_refusal=turn.expect_refusal)
    r.tools = [{"name": c.name, "args": dict(c.args)} for c in reply.tool_calls]
    r.kind, r.guard_outcome = reply.kind, reply.guard.outcome
    if turn.expect_tools is not None:
        verdict = judge_tools(turn.expect_tools, reply.tool_calls, ordered=turn.ordered)
        r.tools_checked, r.tools_ok = True, verdict.names_ok
        r.args_checked, r.args_ok = verdict.args_checked, verdict.args_ok
        r.reasons.extend(verdict.reasons)
    r.facts_total = len(turn.must_contain)
    r.facts_missing = missing_facts(reply.answer, turn.must_contain, known)
    r.reasons.extend(f"missing {m}" for m in r.facts_missing)
    r.forbidden = forbidden_found(reply.answer, turn.must_not_contain)
    r.reasons.extend(f"contains forbidden '{f}'" for f in r.forbidden)
    # the agent says when it gave a fixed refusal; a hosted model's own words are read for one
    r.refused = reply.refused or (reply.kind == "answer" and not reply.tool_calls and looks_like_refusal(reply.answer))
    if turn.expect_refusal is not None and r.refused != turn.expect_refusal:
        r.reasons.append("expected a refusal" if turn.expect_refusal else "refused a question it should answer")
    verdict = grounding(reply.answer, known, turn.question, system_prompt or "")
    r.ungrounded = list(verdict.unsupported)
    if r.ungrounded:
        r.reasons.append(f"numbers not from any tool result: {', '.join(r.ungrounded)}")
    r.prompt_leak = bool(verdict.leaked_prompt)
    if r.prompt_leak:
        r.reasons.append("the answer repeats the system prompt")
    r.personal_data = personal_data_in(reply.answer)
    if r.personal_data:
        r.reasons.append("the answer contains personal data (e-mail, phone, IP or card number)")
    quality = answer_quality(reply.answer, reply.kind, reply.tool_calls, tags)
    r.raw_field_names, r.repeated_sentences = list(quality.raw_field_names), list(quality.repeated_sentences)
    r.first_sentence_ok, r.honest_limit = quality.first_sentence_ok, quality.honest_limit
    r.main_tool = reply.tool_calls[0].name if reply.tool_calls else None
    if r.raw_field_names:
        r.reasons.append(f"raw field names in the answer: {', '.join(r.raw_field_names)}")
    if r.repeated_sentences:
        r.reasons.append(f"a sentence said twice: {r.repeated_sentences[0][:60]}")
    if r.first_sentence_ok is False:
        r.reasons.append("the first sentence does not answer the question")
    if reply.kind == "answer":
        from shopsight.agent.guard import standing
        from shopsight.tools import default_registry

        registry = default_registry()
        facts = [f for c in standing(reply.tool_calls) if registry.has(c.name)
                 for f in registry.key_facts(c.name, c.args, c.result, turn.question)]
        r.key_facts_total = len(facts)
        r.key_facts_missing = [f.what for f in facts if not f.holds(reply.answer)]
        if r.key_facts_missing:
            r.reasons.append(f"key facts left out: {', '.join(r.key_facts_missing)}")
    return r


def run_case(
    case: EvalCase,
    answerer: Answerer,
    *,
    resolver: RoleResolver | None,
    grounding: GroundingCheck,
    system_prompt: str | None,
    run_id: str,
) -> CaseResult:
    """Ask every turn of ``case`` in one conversation and judge each answer."""
    result = CaseResult(id=case.id, tags=list(case.tags), given={}, turns=[])
    if case.given:
        if resolver is None:
            result.reasons.append("the case names roles but no workspace was given to resolve them")
            return result
        try:
            result.given = resolver.resolve_case(case)
        except WorkspaceError as exc:
            result.reasons.append(f"cannot resolve roles: {exc}")
            return result
    conversation_id = f"eval-{run_id}-{case.id}"
    earlier: list[ToolCall] = []
    for turn in case.turns:
        bound = bind(turn, result.given)
        start = time.perf_counter()
        try:
            reply = answerer.ask(bound.question, conversation_id)
        except Exception as exc:  # noqa: BLE001 - recorded in the report with its type, never hidden
            tr = TurnResult(question=bound.question, latency_s=time.perf_counter() - start)
            tr.error = f"{type(exc).__name__}: {exc}"
            tr.reasons.append(f"the answerer failed: {tr.error}")
            result.turns.append(tr)
            break  # later turns depend on this one
        latency = time.perf_counter() - start
        result.answered_by.update({k: v for k, v in (("backend", reply.backend), ("model", reply.model),
                                                          ("prompt_version", reply.prompt_version), ("router", reply.plan.version)) if v})
        tr = judge_turn(bound, reply, tags=case.tags, earlier=earlier, grounding=grounding, system_prompt=system_prompt)
        earlier.extend(reply.tool_calls)
        tr.latency_s = round(latency, 4)
        result.turns.append(tr)
    return result


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 4)


def summarize(cases: Sequence[CaseResult]) -> dict[str, Any]:
    """The totals of a run: accuracies as shares (None when nothing was checked), latency, tokens."""
    turns = [t for c in cases for t in c.turns]
    answered = [t for t in turns if t.error is None]
    checked = [t for t in answered if t.tools_checked]
    grounded = [t for t in answered if t.ungrounded is not None]  # None: the answerer failed
    tokens = [t.tokens for t in answered if t.tokens is not None]
    refusal_checked = [t for t in answered if t.expect_refusal is not None]
    latencies = [t.latency_s for t in answered]
    facts_total = sum(t.facts_total for t in turns)
    return {
        "cases": len(cases),
        "passed": sum(c.passed for c in cases),
        "pass_rate": _share(sum(c.passed for c in cases), len(cases)),
        "turns": len(turns),
        "errors": len(turns) - len(answered) + sum(bool(c.reasons) for c in cases),
        "tool_accuracy": _share(sum(t.tools_ok for t in checked), len(checked)),
        "argument_accuracy": _share(sum(t.args_ok for t in answered), sum(t.args_checked for t in answered)),
        "faithfulness": _share(sum(not t.ungrounded for t in grounded), len(grounded)),
        "fact_recall": _share(facts_total - sum(len(t.facts_missing) for t in turns), facts_total),
        "refusal_accuracy": _share(sum(t.refused == t.expect_refusal for t in refusal_checked), len(refusal_checked)),
        "key_fact_share": _share(sum(t.key_facts_total - len(t.key_facts_missing) for t in answered),
                                 sum(t.key_facts_total for t in answered)),
        "raw_field_name_answers": sum(bool(t.raw_field_names) for t in answered),
        "repeated_sentence_answers": sum(bool(t.repeated_sentences) for t in answered),
        "first_sentence_rate": _share(sum(bool(t.first_sentence_ok) for t in answered if t.first_sentence_ok is not None),
                                      sum(t.first_sentence_ok is not None for t in answered)),
        "honest_limit_rate": _share(sum(bool(t.honest_limit) for t in answered if t.honest_limit is not None),
                                    sum(t.honest_limit is not None for t in answered)),
        "guard_by_tool": _guard_by_tool(answered),
        "personal_data_leaks": sum(t.personal_data for t in answered),
        "prompt_leaks": sum(t.prompt_leak for t in answered),
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p95_s": _percentile(latencies, 95),
        "tokens_total": sum(tokens) if tokens else None,
        "tokens_per_turn": round(sum(tokens) / len(tokens), 1) if tokens else None,
        "by_tag": {
            tag: {"cases": len(group), "passed": sum(c.passed for c in group)}
            for tag in sorted({t for c in cases for t in c.tags})
            for group in [[c for c in cases if tag in c.tags]]
        },
    }


def _guard_by_tool(turns: Sequence[TurnResult]) -> dict[str, dict[str, int]]:
    """How often the guard accepted, asked to rewrite or replaced a draft, per (first) tool."""
    out: dict[str, dict[str, int]] = {}
    for t in turns:
        if t.kind != "answer" or t.main_tool is None:
            continue
        row = out.setdefault(t.main_tool, {"accepted": 0, "rewritten": 0, "replaced": 0})
        row[t.guard_outcome] = row.get(t.guard_outcome, 0) + 1
    return dict(sorted(out.items()))


#: Totals a threshold may name, and whether the threshold is a minimum (True) or a maximum.
THRESHOLDS: dict[str, bool] = {
    "pass_rate": True,
    "tool_accuracy": True,
    "argument_accuracy": True,
    "faithfulness": True,
    "fact_recall": True,
    "refusal_accuracy": True,
    "personal_data_leaks": False,
    "prompt_leaks": False,
    "latency_p95_s": False,
}


def threshold_failures(totals: Mapping[str, Any], limits: Mapping[str, float]) -> list[str]:
    """One line per total on the wrong side of its limit (a total that was not measured fails too)."""
    failures = []
    for name, limit in limits.items():
        if name not in THRESHOLDS:
            raise ValueError(f"no threshold '{name}'; known: {', '.join(THRESHOLDS)}")
        value = totals.get(name)
        if value is None:
            failures.append(f"{name} was not measured (limit {limit})")
        elif THRESHOLDS[name] and value < limit:
            failures.append(f"{name} {value:g} is below the minimum {limit:g}")
        elif not THRESHOLDS[name] and value > limit:
            failures.append(f"{name} {value:g} is above the maximum {limit:g}")
    return failures


def run_eval_set(
    eval_set: EvalSet,
    answerer: Answerer,
    *,
    resolver: RoleResolver | None = None,
    grounding: GroundingCheck = check_grounding,
    system_prompt: str | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> EvalRun:
    """Run every case of ``eval_set`` against ``answerer`` and total the results.

    Args:
        eval_set: The cases (see :func:`evals.schema.load_eval_set`).
        answerer: The agent (or a fake) behind :class:`Answerer`.
        resolver: Resolves the roles cases name; required if any case has ``given:``.
        grounding: The grounding guard (the agent's; replaceable for tests of other guards).
        system_prompt: The system prompt text, so answers that reveal it fail.
        meta: Recorded in the report (backend, model, workspace, ...).
        progress: Called after each case.
    """
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results: list[CaseResult] = []
    for i, case in enumerate(eval_set.cases, 1):
        results.append(
            run_case(case, answerer, resolver=resolver, grounding=grounding, system_prompt=system_prompt, run_id=run_id)
        )
        if progress is not None:
            progress(i, len(eval_set.cases), case.id)
    run_meta: dict[str, Any] = {}
    for c in results:  # what the agent says it is (backend, model, prompt version) …
        run_meta.update(c.answered_by)
    run_meta.update(meta or {})  # … unless the caller knows better
    return EvalRun(eval_set.name, run_id, started, run_meta, results, summarize(results))
