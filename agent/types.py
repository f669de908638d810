"""The typed values one question produces: tool calls, usage, timings, the guard's verdict, the answer.

Every front end (CLI, Slack, evals, the Python API, MCP) takes an :class:`Answer` as it is;
``Answer.to_dict()`` is the JSON form (``shopsight ask --json``). Nothing here imports an LLM
library, so the eval runner and the guard can use these types cheaply.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

# What kind of reply an answer is: a grounded answer, or one of the fixed texts (no LLM, no data).
AnswerKind = Literal["answer", "refusal", "privacy", "help", "clarify", "limit"]
REFUSING_KINDS: frozenset[str] = frozenset({"refusal", "privacy"})


@dataclass(frozen=True)
class CallRequest:
    """A tool call a planner asks for: the tool's name and its arguments (as the model gave them)."""

    name: str
    args: Mapping[str, Any]
    id: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A tool call that ran: its name, arguments, JSON-able result, and where it came from.

    ``result`` is always a dict (an error is ``{"error": ..., "hint": ...}``); ``step`` is the
    planner step that asked for it (the native loop may call tools over several steps).
    """

    name: str
    args: Mapping[str, Any]
    result: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    step: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return "error" in self.result

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args), "result": _plain(self.result), "id": self.id,
                "step": self.step, "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ToolCall":
        return cls(name=str(d["name"]), args=dict(d.get("args") or {}), result=dict(d.get("result") or {}),
                   id=str(d.get("id") or ""), step=int(d.get("step") or 0), seconds=float(d.get("seconds") or 0.0))


@dataclass(frozen=True)
class Usage:
    """Tokens an LLM used for one question (0 when no LLM ran or the server reported none)."""

    prompt: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt + other.prompt, self.completion + other.completion)


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each step of the loop for one question."""

    plan_s: float = 0.0
    tools_s: float = 0.0
    write_s: float = 0.0
    guard_s: float = 0.0
    total_s: float = 0.0
    first_token_s: float | None = None


@dataclass(frozen=True)
class PlanInfo:
    """What the planner decided: who planned, the router's label and confidence, how many steps ran."""

    planner: str
    label: str | None = None
    confidence: float | None = None
    steps: int = 0
    step_limit_hit: bool = False
    version: str | None = None  # the router's name@version, if it planned


@dataclass(frozen=True)
class GuardReport:
    """The grounding guard's verdict on the draft that became the answer.

    ``unsupported``: numbers or ids no tool result supports; ``missing``: key facts left out;
    ``rewritten``: the writer was asked once more; ``replaced``: the answer is the
    deterministic narrative rendered from the tool results.
    """

    ok: bool = True
    unsupported: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # raw field names, repeated sentences, filler
    leaked_prompt: bool = False
    rewritten: bool = False
    replaced: bool = False
    unsupported_after_rewrite: tuple[str, ...] = ()
    masked_personal_data: bool = False

    @property
    def outcome(self) -> Literal["accepted", "rewritten", "replaced"]:
        return "replaced" if self.replaced else "rewritten" if self.rewritten else "accepted"


@dataclass(frozen=True)
class Citations:
    """Session ids and model name@version that an answer's tool results carry."""

    sessions: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """One answered question, as every front end receives it."""

    question: str
    answer: str
    conversation_id: str
    kind: AnswerKind = "answer"
    tool_calls: tuple[ToolCall, ...] = ()
    citations: Citations = field(default_factory=Citations)
    backend: str = ""
    model: str = ""
    prompt_version: str = ""
    plan: PlanInfo = field(default_factory=lambda: PlanInfo(planner=""))
    guard: GuardReport = field(default_factory=GuardReport)
    timings: Timings = field(default_factory=Timings)
    usage: Usage = field(default_factory=Usage)
    draft: str | None = None  # the writer's draft when the guard changed it, else None

    @property
    def refused(self) -> bool:
        return self.kind in REFUSING_KINDS

    @property
    def latency_s(self) -> float:
        return self.timings.total_s

    @property
    def tokens(self) -> int | None:
        return self.usage.total or None

    def with_conversation(self, conversation_id: str) -> "Answer":
        return replace(self, conversation_id=conversation_id)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``answer`` first, then what a reader of ``--json`` needs."""
        d = asdict(self)
        d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        d["citations"] = {"sessions": list(self.citations.sessions), "models": list(self.citations.models)}
        d["guard"] = asdict(self.guard) | {"outcome": self.guard.outcome}
        d["latency_s"] = round(self.latency_s, 3)
        d["tokens"] = self.tokens
        d["refused"] = self.refused
        first = ("answer", "tool_calls", "citations", "backend", "model", "prompt_version", "latency_s")
        return {k: d[k] for k in first} | {k: v for k, v in d.items() if k not in first}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Answer":
        """Rebuild a stored answer (the conversation store keeps ``to_dict()``)."""
        cites = d.get("citations") or {}
        return cls(
            question=str(d.get("question", "")), answer=str(d.get("answer", "")),
            conversation_id=str(d.get("conversation_id", "")), kind=d.get("kind", "answer"),
            tool_calls=tuple(ToolCall.from_dict(c) for c in d.get("tool_calls") or []),
            citations=Citations(tuple(cites.get("sessions") or ()), tuple(cites.get("models") or ())),
            backend=str(d.get("backend", "")), model=str(d.get("model", "")), prompt_version=str(d.get("prompt_version", "")),
            plan=PlanInfo(**{k: v for k, v in (d.get("plan") or {"planner": ""}).items() if k in PlanInfo.__dataclass_fields__}),
            guard=GuardReport(**{k: tuple(v) if isinstance(v, list) else v for k, v in (d.get("guard") or {}).items()
                                 if k in GuardReport.__dataclass_fields__}),
            timings=Timings(**{k: v for k, v in (d.get("timings") or {}).items() if k in Timings.__dataclass_fields__}),
            usage=Usage(**{k: v for k, v in (d.get("usage") or {}).items() if k in Usage.__dataclass_fields__}),
            draft=d.get("draft"),
        )


def _plain(value: Any) -> Any:
    """A JSON-able deep copy (tool results are dicts of plain values; dates become strings)."""
    return json.loads(json.dumps(value, default=str))
