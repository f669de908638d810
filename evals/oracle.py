"""An answerer that calls exactly the tools a question set expects: a check on the set, not on the agent.

Run a set with it (``shopsight eval run SET.yaml --backend oracle``) to learn whether every
expectation can be met on a workspace: the roles resolve, the tools answer, the references
point at fields the results really have, and the facts appear in the deterministic answer
the agent's guard writes from tool results. A case that fails here is a wrong case (or a
missing model or index), not a weak agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shopsight.agent.guard import citations, render_answer, with_citations
from shopsight.agent.loop import run_calls
from shopsight.agent.types import Answer, CallRequest, PlanInfo, ToolCall
from shopsight.behavior.workspace import WorkspaceError
from shopsight.evals.roles import RoleResolver
from shopsight.evals.runner import bind
from shopsight.evals.schema import EvalSet, Turn
from shopsight.tools import ToolContext, default_registry
from shopsight.tools.registry import Registry

REFUSAL = "Sorry, I can only answer questions about this shop's users, orders and models."


@dataclass
class ExpectationOracle:
    """Answers each (bound) question of ``eval_set`` with its expected tool calls.

    Args:
        eval_set: The set whose expectations are followed.
        resolver: Resolves the roles, so questions can be matched after binding.
        context: The tools' context on the same workspace.
        registry: The tools (default: the installed ones); the same registry renders the answer.
    """

    eval_set: EvalSet
    resolver: RoleResolver
    context: ToolContext
    registry: Registry = field(default_factory=default_registry)
    _turns: dict[str, Turn] = field(default_factory=dict)
    _last_calls: dict[str, tuple[ToolCall, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for case in self.eval_set.cases:
            try:
                values = self.resolver.resolve_case(case)
            except WorkspaceError:  # the runner reports the unresolvable role for this case
                continue
            for turn in case.turns:
                bound = bind(turn, values)
                self._turns.setdefault(bound.question, bound)

    def ask(self, question: str, conversation_id: str) -> Answer:
        turn = self._turns.get(question)
        if turn is None:
            raise KeyError(f"the oracle knows no case asking {question!r}")
        if turn.expect_refusal:
            return self._answer(question, conversation_id, REFUSAL, (), kind="refusal")
        if not turn.expect_tools:
            # A follow-up without tools is answered from the conversation's last results.
            calls = self._last_calls.get(conversation_id, ())
            text = self._render(calls) if calls else "Which user do you mean? Give me a user id."
            return self._answer(question, conversation_id, text, (), kind="answer" if calls else "clarify")
        requests = []
        for expected in turn.expect_tools:
            args = dict(expected.args)
            if expected.name == "search_histories":
                args.setdefault("query", question)
            requests.append(CallRequest(expected.name, args))
        calls = tuple(run_calls(self.registry, self.context, requests))
        self._last_calls[conversation_id] = calls
        return self._answer(question, conversation_id, self._render(calls), calls)

    def _answer(self, question: str, cid: str, text: str, calls: tuple[ToolCall, ...], kind: Any = "answer") -> Answer:
        return Answer(question=question, answer=text, conversation_id=cid, kind=kind, tool_calls=calls,
                      citations=citations(calls), backend="oracle", plan=PlanInfo(planner="oracle"))

    def _render(self, calls: tuple[ToolCall, ...]) -> str:
        return with_citations(render_answer(calls, self.registry), citations(calls))
