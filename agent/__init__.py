"""The agent: one explicit loop (agent/loop.py), planners, writers, memory and the grounding guard.

Typical use::

    from shopsight.agent import Settings, build_agent
    agent = build_agent(Settings.from_env(), Workspace.at(None))
    answer = agent.ask("why is u00042 likely to churn?", conversation_id="thread-1")
    answer.answer, answer.tool_calls, answer.citations

Nothing here creates a client or loads a model at import time.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "Answer", "Settings", "build_agent"]


def __getattr__(name: str) -> Any:
    # Lazy: `import shopsight.agent.guard` (evals) must not pull in the loop and its LLM libraries.
    if name in ("Agent", "build_agent"):
        from shopsight.agent import loop

        return getattr(loop, name)
    if name == "Answer":
        from shopsight.agent.types import Answer

        return Answer
    if name == "Settings":
        from shopsight.agent.settings import Settings

        return Settings
    raise AttributeError(f"module 'agent' has no attribute {name!r}")

from shopsight import refuse_top_level_import  # noqa: E402

refuse_top_level_import(__name__)
