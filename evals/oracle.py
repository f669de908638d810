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

from agent.guard import citations, render_answer, with_citations
from behavior.workspace import WorkspaceError
from evals.roles import RoleResolver
from evals.runner import bind
from evals.schema import EvalSet, Turn
from tools import ToolContext, call_tool

REFUSAL = "Sorry, I can only answer questions about this shop's users, orders and models."


@dataclass
class ExpectationOracle:
    """Answers each (bound) question of ``eval_set`` with its expected tool calls.

    Args:
        eval_set: The set whose expectations are followed.
        resolver: Resolves the roles, so questions can be matched after binding.
        context: The tools' context on the same workspace.
    """

    eval_set: EvalSet
    resolver: RoleResolver
    context: ToolContext
    _turns: dict[str, Turn] = field(default_factory=dict)
    _last_calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for case in self.eval_set.cases:
            try:
                values = self.resolver.resolve_case(case)
            except WorkspaceError:  # the runner reports the unresolvable role for this case
                continue
            for turn in case.turns:
                bound = bind(turn, values)
                self._turns.setdefault(bound.question, bound)

    def ask(self, question: str, conversation_id: str) -> dict[str, Any]:
        turn = self._turns.get(question)
        if turn is None:
            raise KeyError(f"the oracle knows no case asking {question!r}")
        if turn.expect_refusal:
            return {"answer": REFUSAL, "tool_calls": [], "backend": "oracle"}
        if not turn.expect_tools:
            # A follow-up without tools is answered from the conversation's last results.
            calls = self._last_calls.get(conversation_id, [])
            return {"answer": self._render(calls) if calls else "Which user do you mean? Give me a user id.",
                    "tool_calls": [], "backend": "oracle"}
        calls = []
        for expected in turn.expect_tools:
            args = dict(expected.args)
            if expected.name == "search_histories":
                args.setdefault("query", question)
            calls.append({"name": expected.name, "args": args, "result": call_tool(self.context, expected.name, args)})
        self._last_calls[conversation_id] = calls
        return {"answer": self._render(calls), "tool_calls": calls, "backend": "oracle"}

    @staticmethod
    def _render(calls: list[dict[str, Any]]) -> str:
        return with_citations(render_answer(calls), citations(calls))
