"""The answerer an eval run talks to: the ShopSight agent on the chosen backend (or the set's oracle).

Kept apart from the runner so the runner (and its tests) never load a model.
"""

from __future__ import annotations

from typing import Any

from shopsight.behavior.workspace import Workspace, WorkspaceError
from shopsight.evals.runner import Answerer
from shopsight.evals.schema import EvalSet

BACKENDS: tuple[str, ...] = ("local", "openai", "oracle")


class AgentUnavailable(WorkspaceError):
    """The agent cannot be built (no model file, no server, no router); the message says how to fix it."""


def make_answerer(
    workspace: Workspace, backend: str | None = None, *, eval_set: EvalSet | None = None
) -> tuple[Answerer, dict[str, Any]]:
    """Build the answerer for ``backend``.

    Args:
        workspace: The workspace the questions are about.
        backend: ``local`` (embedded llama.cpp + router), ``openai`` (any OpenAI-compatible
            server, from ``OPENAI_BASE_URL``/``OPENAI_API_KEY``/``SHOPSIGHT_MODEL``), or
            ``oracle`` (calls exactly the tools ``eval_set`` expects: checks the set itself).
            Default: ``SHOPSIGHT_BACKEND``, else ``local``.
        eval_set: The set being run (needed by ``oracle`` only).

    Returns:
        The answerer and what to record about it (backend, model, prompt and router versions).

    Raises:
        AgentUnavailable: The backend cannot start (the message says what to set or train).
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend == "oracle":
        if eval_set is None:
            raise ValueError("the oracle backend needs the question set it follows")
        from shopsight.evals.oracle import ExpectationOracle
        from shopsight.evals.roles import RoleResolver
        from shopsight.tools import ToolContext

        return ExpectationOracle(eval_set, RoleResolver(workspace), ToolContext(workspace)), {"backend": "oracle"}

    from shopsight.agent.backends import BackendError
    from shopsight.agent.loop import build_agent
    from shopsight.agent.settings import Settings

    settings = Settings.from_env(backend=backend)
    try:
        agent = build_agent(settings, workspace)
    except BackendError as exc:
        raise AgentUnavailable(str(exc)) from exc
    meta = {"backend": agent.backend, "model": agent.model, "prompt_version": agent.prompt_version,
            "planner": agent.planner.name}
    return agent, meta


def system_prompt_text() -> str:
    """The system prompt as the agent sends it, so answers that reveal it are caught."""
    from shopsight.prompts import load_prompt

    return load_prompt("system").text
