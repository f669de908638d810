"""Conversations kept in the workspace (runs/conversations.sqlite), by id, so follow-ups and --resume work.

One row per answered question: the :class:`~agent.types.Answer` as JSON, with every string in
it masked (a question may carry an e-mail address the analyst pasted). Appends are safe across
processes: the turn number is allocated inside the insert itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from shopsight.agent.types import Answer
from shopsight.behavior.privacy import mask_pii
from shopsight.behavior.workspace import Workspace, WorkspaceError

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
    # v2: answers carry their turn number (unique per conversation); LangChain messages are no longer kept.
    """
    ALTER TABLE answers ADD COLUMN seq INTEGER;
    UPDATE answers SET seq = (SELECT COUNT(*) FROM answers AS a WHERE a.conversation_id = answers.conversation_id
                              AND a.rowid < answers.rowid);
    CREATE UNIQUE INDEX answers_turn ON answers (conversation_id, seq);
    """,
)


def _masked(value: Any) -> Any:
    """``value`` with every string in it masked (keys and numbers untouched)."""
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _migrate(con: sqlite3.Connection) -> None:
    """Bring the schema to the newest version, once, even with several processes opening the file at once."""
    con.isolation_level = None
    con.execute("BEGIN IMMEDIATE")  # the first process migrates; the others wait, then find nothing to do
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        for i, script in enumerate(MIGRATIONS[version:], start=version):
            for statement in filter(str.strip, script.split(";")):
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {i + 1}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.isolation_level = ""


class ConversationStore:
    """SQLite store of conversations: one masked answer record per question."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_workspace(cls, ws: Workspace) -> "ConversationStore":
        return cls(ws.runs_dir / "conversations.sqlite")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30)
            if con.execute("PRAGMA user_version").fetchone()[0] < len(MIGRATIONS):
                _migrate(con)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise WorkspaceError(f"cannot open the conversation store {self.path}: {exc} "
                                 "(is the workspace writable? a corrupted file can be moved aside)") from exc
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

    def append(self, answer: Answer) -> int:
        """Store one answered question (masked) as the conversation's next turn; returns its turn number."""
        record = _masked(answer.to_dict() | {"question": answer.question, "conversation_id": answer.conversation_id})
        with closing(self._connect()) as con, con:
            # one statement: the turn number is allocated under SQLite's write lock, whoever else appends
            cur = con.execute(
                "INSERT INTO answers (conversation_id, created, question, record, seq) "
                "SELECT ?, ?, ?, ?, COALESCE(MAX(seq), -1) + 1 FROM answers WHERE conversation_id = ? RETURNING seq",
                (answer.conversation_id, time.time(), record["question"], json.dumps(record, default=str), answer.conversation_id),
            )
            return int(cur.fetchone()[0])

    def records(self, cid: str) -> list[dict[str, Any]]:
        """The conversation's answer records (JSON), oldest first."""
        with closing(self._connect()) as con:
            rows = con.execute("SELECT record FROM answers WHERE conversation_id = ? ORDER BY seq", (cid,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def answers(self, cid: str) -> list[Answer]:
        """The conversation's answers, oldest first; WorkspaceError if there is no such conversation."""
        if not self.exists(cid):
            raise WorkspaceError(f"no conversation '{cid}' in {self.path}: start one with `shopsight chat`")
        return [Answer.from_dict(r) for r in self.records(cid)]
