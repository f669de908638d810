"""Planners: who decides which tools a question needs. One step at a time, called plainly by the loop.

A :class:`Planner` is asked for its next step given the question, the conversation's earlier
answers and the tool calls this question has made so far. A step is either more tool calls,
or the end: with a draft (the native planner's own answer), a fixed text (the router's help,
refusal, clarifying question), or nothing (the writer phrases the answer).

- :class:`RouterPlanner` (embedded default): the trained router plans every call in one step;
  no LLM chooses tools, so retrieved text cannot sway the choice.
- :class:`ToolCallingPlanner` (hosted, or any LangChain chat model with ``bind_tools``): the
  model sees the tools' schemas and asks for calls; results (errors included) go back to it as
  tool messages; the loop bounds the steps.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from shopsight.agent.backends import TokenCallback, translated_errors, usage_of
from shopsight.agent.types import Answer, AnswerKind, CallRequest, ToolCall, Usage
from shopsight.tools.registry import Registry, result_json

# The router's labels that get a fixed text instead of tool calls.
_FIXED_TEXT: dict[str, tuple[AnswerKind, str]] = {
    "help": ("help", "help"), "out_of_scope": ("refusal", "refusal"), "privacy": ("privacy", "privacy"),
}


@dataclass(frozen=True)
class PlanStep:
    """One planner step: tool calls to run, or the end (with a draft, a fixed text, or neither)."""

    calls: tuple[CallRequest, ...] = ()
    text: str | None = None
    kind: AnswerKind = "answer"  # not "answer": ``text`` is a fixed text (no data, no guard)
    label: str | None = None
    confidence: float | None = None
    usage: Usage = Usage()
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return not self.calls


class Planner(Protocol):
    """Decides the next step for one question; holds no state of any question between calls."""

    name: str
    version: str | None

    def step(self, question: str, history: Sequence[Answer], calls: Sequence[ToolCall],
             on_token: TokenCallback | None = None) -> PlanStep: ...


def _history_calls(history: Sequence[Answer]) -> list[ToolCall]:
    return [c for a in history for c in a.tool_calls]


class RouterPlanner:
    """Today's router behind the planner seam: plans every call of a question in its first step.

    Args:
        make_router: Builds the router on first use (it loads MiniLM and the workspace's entity
            lists: a question that never reaches the planner never pays for them).
        registry: The tools the router's labels lead to.
    """

    name = "router"

    def __init__(self, make_router: Callable[[], Any], registry: Registry) -> None:
        self._make_router = make_router
        self._router: Any = None
        self._lock = threading.Lock()
        self.registry = registry
        self.version: str | None = None

    def router(self) -> Any:
        with self._lock:
            if self._router is None:
                self._router = self._make_router()
                self.version = self._router.version
            return self._router

    def step(self, question: str, history: Sequence[Answer], calls: Sequence[ToolCall],
             on_token: TokenCallback | None = None) -> PlanStep:
        if calls:
            return PlanStep()  # every call was planned in the first step: the writer takes over
        from shopsight.prompts import load_prompt

        router = self.router()
        t0 = time.perf_counter()
        plan = router.plan(question, self.registry.remember(_history_calls(history)))
        seconds = time.perf_counter() - t0
        if plan.calls:
            requests = tuple(CallRequest(c["name"], dict(c["args"]), f"call_{uuid.uuid4().hex[:8]}") for c in plan.calls)
            return PlanStep(calls=requests, label=plan.label, confidence=plan.confidence, seconds=seconds)
        if plan.limit is not None:  # no tool answers it: say so, and what can be asked instead
            from shopsight.agent.limits import limit_text

            return PlanStep(text=limit_text(plan.limit), kind="limit", label=plan.label, confidence=plan.confidence,
                            seconds=seconds)
        # a question the router understood but could not fill (no user id): ask which user
        kind, prompt = _FIXED_TEXT.get(plan.label, ("clarify", "clarify"))
        return PlanStep(text=load_prompt(prompt).text, kind=kind, label=plan.label, confidence=plan.confidence, seconds=seconds)


class ToolCallingPlanner:
    """A chat model that chooses tools natively (OpenAI-compatible ``tool_calls``), one model turn per step.

    Args:
        chat_model: A LangChain chat model supporting ``bind_tools``.
        registry: The tools it may call (their docstrings and JSON schemas are what it sees).
        ctx: The tools' hidden context (bound into the LangChain tools, never shown).
        system_prompt: The fixed system prompt.
        settings: For error messages naming the server (optional).
    """

    name = "native"
    version = None

    def __init__(self, chat_model: Any, registry: Registry, ctx: Any, system_prompt: str, settings: Any = None) -> None:
        self.registry = registry
        self.system_prompt = system_prompt
        self.settings = settings
        self.tools = registry.langchain_tools(ctx)
        self.model = chat_model.bind_tools(self.tools)

    def messages(self, question: str, history: Sequence[Answer], calls: Sequence[ToolCall]) -> list[Any]:
        """What the model is sent: the system prompt, earlier turns, the question, this question's calls."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

        def turn(q: str, turn_calls: Sequence[ToolCall]) -> list[Any]:
            msgs: list[Any] = [HumanMessage(content=q)]
            for step in sorted({c.step for c in turn_calls}):
                batch = [c for c in turn_calls if c.step == step]
                msgs.append(AIMessage(content="", tool_calls=[{"name": c.name, "args": dict(c.args), "id": c.id or f"call_{i}",
                                                               "type": "tool_call"} for i, c in enumerate(batch)]))
                msgs += [ToolMessage(content=result_json(c.result), tool_call_id=c.id or f"call_{i}", name=c.name)
                         for i, c in enumerate(batch)]
            return msgs

        out: list[Any] = [SystemMessage(content=self.system_prompt)]
        for earlier in history:  # earlier turns with their tool results: follow-ups refer to them
            out += turn(earlier.question, earlier.tool_calls) + [AIMessage(content=earlier.answer)]
        return out + turn(question, calls)

    def step(self, question: str, history: Sequence[Answer], calls: Sequence[ToolCall],
             on_token: TokenCallback | None = None) -> PlanStep:
        t0 = time.perf_counter()
        messages = self.messages(question, history, calls)
        with translated_errors(self.settings):
            reply = self._stream(messages, on_token) if on_token else self.model.invoke(messages)
        usage = usage_of(reply)
        if getattr(reply, "tool_calls", None):
            requests = tuple(CallRequest(tc["name"], dict(tc.get("args") or {}), tc.get("id") or f"call_{uuid.uuid4().hex[:8]}")
                             for tc in reply.tool_calls)
            return PlanStep(calls=requests, usage=usage, seconds=time.perf_counter() - t0)
        return PlanStep(text=str(reply.content or ""), usage=usage, seconds=time.perf_counter() - t0)

    def _stream(self, messages: list[Any], on_token: TokenCallback) -> Any:
        """Stream the model's turn; text goes to ``on_token`` until the turn turns out to call tools."""
        merged: Any = None
        calling = False
        for chunk in self.model.stream(messages):
            merged = chunk if merged is None else merged + chunk
            calling = calling or bool(getattr(chunk, "tool_call_chunks", None))
            text = chunk.content if isinstance(chunk.content, str) else ""
            if text and not calling:
                on_token(text)
        if merged is None:
            from langchain_core.messages import AIMessage

            return AIMessage(content="")
        return merged
