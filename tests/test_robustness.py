"""Robustness findings of issue 16 (items 5-6): what breaks when the data, the disk or other processes misbehave.

Concurrent writers to one conversation, and the CLI's answers to a corrupted index, a read-only
workspace, broken model files, bad input paths and options: one `Error:` line that names what
is wrong and how to fix it, a non-zero exit, and never a traceback.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from conversation_writer import append_one_turn

WRITERS = 20


# --- concurrent writers ---------------------------------------------------------------------------


def test_twenty_processes_appending_to_one_conversation_lose_no_turn(tmp_path: Path) -> None:
    """Twenty spawned processes append at once (released together): every turn is kept, each with its own number."""
    from agent.memory import ConversationStore

    path = tmp_path / "runs" / "conversations.sqlite"
    cid = ConversationStore(path).new_conversation("local", "test-model", "slack:T1:C1:1.0")
    ctx = multiprocessing.get_context("spawn")
    ready, go, turns = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=append_one_turn, args=(str(path), cid, n, ready, go, turns)) for n in range(WRITERS)]
    for w in writers:
        w.start()
    try:
        for _ in range(WRITERS):  # every process has opened the store before any appends
            assert ready.acquire(timeout=180), "a writer process did not start"
        go.set()
        reported = dict(turns.get(timeout=120) for _ in range(WRITERS))
    finally:
        for w in writers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in writers] == [0] * WRITERS

    assert sorted(reported.values()) == list(range(WRITERS))  # unique turn numbers, none skipped
    records = ConversationStore(path).records(cid)
    assert sorted(r["question"] for r in records) == sorted(f"question {n}" for n in range(WRITERS))
    # Stored in turn order: the record of turn t is the question whose append returned t.
    by_turn = {turn: n for n, turn in reported.items()}
    assert [r["question"] for r in records] == [f"question {by_turn[t]}" for t in range(WRITERS)]
