"""The agent: LLM backends, the router for small local models, the one tool loop, memory, the grounding guard.

Typical use::

    from agent import Settings, build_agent
    agent = build_agent(Settings.from_env(), Workspace.at(None))
    answer = agent.ask("why is u00042 likely to churn?", conversation_id="thread-1")
    answer.answer, answer.tool_calls, answer.citations

Nothing here creates a client or loads a model at import time.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "AgentAnswer", "Settings", "build_agent"]


def __getattr__(name: str) -> Any:
    # Lazy: `import agent.guard` (evals) must not pull in langchain and the loop.
    if name in ("Agent", "AgentAnswer", "build_agent"):
        from agent import loop

        return getattr(loop, name)
    if name == "Settings":
        from agent.settings import Settings

        return Settings
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
