"""A child process for the concurrent-writer test: opens the conversation store and appends one turn.

Kept apart from the test module so each spawned process imports only the store, not the CLI.
Not a test module (no tests here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def append_one_turn(path: str, conversation_id: str, n: int, ready: Any, go: Any, turns: Any) -> None:
    """Build ``ConversationStore(path)``, wait until every writer is ready, append question ``n``, report its turn."""
    from shopsight.agent.memory import ConversationStore
    from shopsight.agent.types import Answer

    store = ConversationStore(Path(path))
    ready.release()
    if not go.wait(timeout=120):
        raise RuntimeError("the test never released the writers")
    answer = Answer(question=f"question {n}", answer=f"answer {n}", conversation_id=conversation_id)
    turns.put((n, store.append(answer)))
