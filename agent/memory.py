"""Conversations kept in the workspace (runs/conversations.sqlite), by id, so follow-ups and --resume work."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, messages_from_dict, messages_to_dict

from behavior.workspace import Workspace, WorkspaceError

# Each entry migrates the schema from version i to i+1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (id TEXT PRIMARY KEY, created REAL NOT NULL, backend TEXT, model TEXT);
    CREATE TABLE messages (
        conversation_id TEXT NOT NULL REFERENCES conversations(id), seq INTEGER NOT NULL,
        message TEXT NOT NULL, PRIMARY KEY (conversation_id, seq));
    CREATE TABLE answers (
        conversation_id TEXT NOT NULL REFERENCES conversations(id), created REAL NOT NULL,
        question TEXT NOT NULL, record TEXT NOT NULL);
    """,
)


class ConversationStore:
    """SQLite store of conversations: their LangChain messages and one record per answer."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_workspace(cls, ws: Workspace) -> "ConversationStore":
        return cls(ws.runs_dir / "conversations.sqlite")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=10)
        version = con.execute("PRAGMA user_version").fetchone()[0]
        for i, script in enumerate(MIGRATIONS[version:], start=version):
            con.executescript(script)
            con.execute(f"PRAGMA user_version = {i + 1}")
        return con

    def new_conversation(self, backend: str, model: str, cid: str | None = None) -> str:
        """Create a conversation (a given id is kept, e.g. one per Slack thread); returns its id."""
        cid = cid or uuid.uuid4().hex[:12]
        with closing(self._connect()) as con, con:
            con.execute("INSERT OR IGNORE INTO conversations VALUES (?, ?, ?, ?)", (cid, time.time(), backend, model))
        return cid

    def exists(self, cid: str) -> bool:
        with closing(self._connect()) as con:
            return con.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone() is not None

    def messages(self, cid: str) -> list[BaseMessage]:
        """The conversation's messages, oldest first; WorkspaceError if there is no such conversation."""
        if not self.exists(cid):
            raise WorkspaceError(f"no conversation '{cid}' in {self.path}: start one with `shopsight chat`")
        with closing(self._connect()) as con:
            rows = con.execute("SELECT message FROM messages WHERE conversation_id = ? ORDER BY seq", (cid,)).fetchall()
        return messages_from_dict([json.loads(r[0]) for r in rows])

    def append(self, cid: str, messages: list[BaseMessage], question: str, record: dict[str, Any]) -> None:
        """Add one turn's messages and its answer record, in one transaction."""
        with closing(self._connect()) as con, con:
            start = con.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE conversation_id = ?", (cid,)).fetchone()[0]
            con.executemany(
                "INSERT INTO messages VALUES (?, ?, ?)",
                [(cid, start + i, json.dumps(d, default=str)) for i, d in enumerate(messages_to_dict(messages))],
            )
            con.execute("INSERT INTO answers VALUES (?, ?, ?, ?)", (cid, time.time(), question, json.dumps(record, default=str)))

    def answers(self, cid: str) -> list[dict[str, Any]]:
        with closing(self._connect()) as con:
            rows = con.execute("SELECT record FROM answers WHERE conversation_id = ? ORDER BY created", (cid,)).fetchall()
        return [json.loads(r[0]) for r in rows]
