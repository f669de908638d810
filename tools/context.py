"""The context every tool receives (hidden from the LLM): the workspace and what is loaded from it, lazily.

Tests build a ToolContext with small hand-made events and fake models or index; the CLI
builds one per process so events, features, models and the index load once.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import pandas as pd

from shopsight.behavior.workspace import Workspace, WorkspaceError

if TYPE_CHECKING:
    from shopsight.behavior.query import QueryEngine

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 240  # a retrieved document is data to quote, not a page to paste


class ScoringModel(Protocol):
    """What tools need from a trained model (intent, churn or risk)."""

    def predict_proba(self, events: pd.DataFrame, user_ids: list[str] | None = None) -> pd.Series: ...

    def explain(self, events: pd.DataFrame, user_id: str) -> dict: ...


class SessionSearch(Protocol):
    """What tools need from the session index."""

    def user_history(self, user_id: str, since: str | None = None, until: str | None = None, limit: int = 20) -> list: ...

    def search(self, query: str, k: int = 10, **filters: Any) -> list: ...


def num(value: Any, digits: int = 2) -> float | int | None:
    """A JSON number rounded for reading; None for missing values."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    value = float(value)
    if value.is_integer():
        return int(value)
    return round(value, digits)


def day(ts: Any) -> str | None:
    """A timestamp's day as YYYY-MM-DD (None for a missing one)."""
    if ts is None or pd.isna(ts):
        return None
    return pd.Timestamp(ts).strftime("%Y-%m-%d")


# --- the one meaning of a date range ---------------------------------------------------------
_DATE_ONLY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")


@dataclass(frozen=True)
class DateRange:
    """Sessions or events starting in ``[start, end)``, as every tool and the index read it.

    ``since`` means "on or after"; ``until`` means "on or before": a date includes that whole
    day, a date and time includes that instant. Times without a zone are UTC.
    """

    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None  # exclusive

    def contains(self, ts: pd.Series) -> pd.Series:
        """A boolean mask of the timestamps inside the range."""
        keep = pd.Series(True, index=ts.index)
        if self.start is not None:
            keep &= ts >= self.start
        if self.end is not None:
            keep &= ts < self.end
        return keep

    @property
    def empty(self) -> bool:
        return self.start is not None and self.end is not None and self.start >= self.end


def _utc(value: str, what: str) -> pd.Timestamp:
    from shopsight.tools.registry import ToolArgumentError

    try:
        ts = pd.Timestamp(str(value).strip())
    except (ValueError, TypeError):
        raise ToolArgumentError(f"{what} '{value}' is not a date: use YYYY-MM-DD, e.g. 2026-04-01") from None
    if ts is pd.NaT:
        raise ToolArgumentError(f"{what} '{value}' is not a date: use YYYY-MM-DD, e.g. 2026-04-01")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def date_range(since: str | None = None, until: str | None = None) -> DateRange:
    """Parse a tool's ``since``/``until`` arguments into the one :class:`DateRange` meaning.

    Raises:
        ToolArgumentError: a value is not a date, or ``since`` is after ``until`` (an empty range).
    """
    from shopsight.tools.registry import ToolArgumentError

    start = _utc(since, "since") if since else None
    end = None
    if until:
        end = _utc(until, "until")
        end = end + pd.Timedelta(days=1) if _DATE_ONLY.match(str(until)) else end + pd.Timedelta(microseconds=1)
    rng = DateRange(start, end)
    if rng.empty:
        raise ToolArgumentError(f"the date range is empty: since {since} is after until {until}")
    return rng


def mask_text(text: str | None) -> str:
    """Mask emails, phones, IPs and cards, and bound the length: what any tool returns as free text."""
    if text is None or (isinstance(text, float) and pd.isna(text)) or text is pd.NA:
        return ""
    from shopsight.behavior.privacy import mask_text_bounded

    return mask_text_bounded(str(text), MAX_TEXT_CHARS)


@dataclass
class ToolContext:
    """The workspace and what tools read from it, loaded on first use and kept.

    The query engine (:meth:`query_engine`) reads the workspace's events file, not ``events``:
    a context built on preloaded events must have saved them to the workspace too. Close the
    context (or use it as a context manager) to release the engine's DuckDB connection.

    Args:
        workspace: The workspace the tools read.
        chroma_url: A Chroma server to use instead of the embedded index.
        events: Preloaded events (tests); default: ``workspace.load_events()``.
        models: Preloaded models by name (tests); default: ``behavior.models.load_model``.
        index: A preloaded session index (tests); default: ``index.store.SessionIndex``.
        raise_errors: Re-raise unexpected tool exceptions (SHOPSIGHT_RAISE_ERRORS=1).
    """

    workspace: Workspace
    chroma_url: str | None = None
    events: pd.DataFrame | None = None
    models: dict[str, ScoringModel] = field(default_factory=dict)
    index: SessionSearch | None = None
    model_loader: Callable[[Workspace, str], ScoringModel] | None = None
    raise_errors: bool = False  # re-raise a tool's unexpected exception instead of reporting it
    _features: pd.DataFrame | None = field(default=None, repr=False)
    _engine: "QueryEngine | None" = field(default=None, repr=False)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sessions: pd.DataFrame | None = field(default=None, repr=False)
    _user_ids: frozenset[str] | None = field(default=None, repr=False)
    _order_ids: frozenset[str] | None = field(default=None, repr=False)
    _vocabulary: tuple[str, ...] | None = field(default=None, repr=False)
    _item_names: dict[str, str] | None = field(default=None, repr=False)

    # --- data ------------------------------------------------------------------------
    def get_events(self) -> pd.DataFrame:
        if self.events is None:
            self.events = self.workspace.load_events()
        return self.events

    def user_ids(self) -> frozenset[str]:
        if self._user_ids is None:
            self._user_ids = frozenset(self.get_events()["user_id"].astype(str).unique())
        return self._user_ids

    def has_user(self, user_id: str) -> bool:
        return str(user_id) in self.user_ids()

    def order_ids(self) -> frozenset[str]:
        if self._order_ids is None:
            events = self.get_events()
            self._order_ids = (frozenset(events["order_id"].dropna().astype(str).unique())
                               if "order_id" in events.columns else frozenset())
        return self._order_ids

    def has_order(self, order_id: str) -> bool:
        return str(order_id) in self.order_ids()

    def vocabulary(self) -> tuple[str, ...]:
        """The category and country names of the events: an answer may name one only if a result does."""
        if self._vocabulary is None:
            events = self.get_events()
            names: set[str] = set()
            for column in ("category", "country"):
                if column in events.columns:
                    names |= {str(v) for v in events[column].dropna().unique() if len(str(v)) >= 3 or column == "country"}
            self._vocabulary = tuple(sorted(names))
        return self._vocabulary

    def item_names(self) -> dict[str, str]:
        """Item id → product name from the workspace's catalogue (empty without one), read once."""
        if self._item_names is None:
            catalogue = self.workspace.load_catalogue()
            self._item_names = ({} if catalogue is None or not {"item_id", "name"} <= set(catalogue.columns)
                                else dict(zip(catalogue["item_id"].astype(str), catalogue["name"].astype(str))))
        return self._item_names

    def privacy_key(self) -> bytes | None:
        """The workspace's pseudonym key, if it has one (ids that were e-mails are keyed with it)."""
        from shopsight.behavior.ingest import KEY_FILE, workspace_key

        return workspace_key(self.workspace) if (self.workspace.root / KEY_FILE).exists() else None

    def ids(self) -> "WorkspaceIds":
        """The user and order ids, for entity resolution in questions."""
        return WorkspaceIds(self.user_ids(), self.order_ids())

    def user_events(self, user_id: str) -> pd.DataFrame:
        """One user's events (through the row index the behaviour layer keeps on the user column)."""
        from shopsight.behavior.models.rules import rows_of_users

        events = self.get_events()
        return events[rows_of_users(events, [str(user_id)])]

    def features(self) -> pd.DataFrame:
        if self._features is None:
            from shopsight.behavior.features import user_features

            self._features = user_features(self.get_events())
        return self._features

    def sessions(self) -> pd.DataFrame:
        if self._sessions is None:
            from shopsight.behavior.features import session_table

            self._sessions = session_table(self.get_events())
        return self._sessions

    def query_engine(self) -> "QueryEngine":
        """The workspace's typed analytics engine, created on first use (one DuckDB connection per context).

        Created lazily so a question that never asks for a metric never opens DuckDB; shared by
        every call of the context (the engine takes a cursor per query, so threads may share it).
        """
        with self._engine_lock:
            if self._engine is None:
                from shopsight.behavior.query import QueryEngine

                self._engine = QueryEngine(self.workspace)
            return self._engine

    def close(self) -> None:
        """Release what the context opened (the query engine's connection); a later call reopens it."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def __enter__(self) -> "ToolContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models and index -------------------------------------------------------------
    def model(self, name: str) -> ScoringModel:
        """The trained model ``name``; raises WorkspaceError with the command to train it."""
        if name not in self.models:
            loader = self.model_loader
            if loader is None:
                try:
                    from shopsight.behavior.models import load_model as loader  # type: ignore[no-redef]
                except ImportError as exc:
                    raise WorkspaceError(f"the {name} model is not available in this install ({exc})") from exc
            self.models[name] = loader(self.workspace, name)
        return self.models[name]

    def session_index(self) -> SessionSearch:
        """The session index; raises WorkspaceError with the command to build it if it is empty."""
        if self.index is None:
            from shopsight.index.store import SessionIndex, SessionIndexError

            index = SessionIndex(self.workspace, chroma_url=self.chroma_url)
            try:
                index.require_built()
            except SessionIndexError as exc:
                raise WorkspaceError(str(exc)) from exc
            self.index = index
        return self.index


def hit_row(hit: Any) -> dict[str, Any]:
    """One index hit as a tool returns it: session id, user, day, the masked summary, purchased."""
    meta = getattr(hit, "metadata", None) or {}
    row = {
        "session_id": str(hit.session_id),
        "user_id": str(hit.user_id),
        "start": str(hit.start)[:10],
        "summary": mask_text(hit.document),
    }
    if "purchased" in meta:
        row["purchased"] = bool(meta["purchased"])
    return row


def _digits_key(token: str) -> str:
    """An id with the leading zeros of its number dropped, case folded: 'U0042' and 'u00042' → 'u42'."""
    return re.sub(r"0+(\d)", r"\1", token.casefold())


def similar_ids(token: str, ids: frozenset[str], limit: int = 3) -> list[str]:
    """Ids of the workspace a mistyped ``token`` probably meant ("u0042" → "u00042"), best first.

    Zero-padding and case are ignored first; then a close spelling (difflib) among ids of about
    the same length and first character, so the cost stays small for a million ids.
    """
    token = str(token).strip()
    if not token or not ids:
        return []
    key = _digits_key(token)
    same = sorted(i for i in ids if _digits_key(i) == key and i != token)
    if same:
        return same[:limit]
    import difflib

    near = [i for i in ids if abs(len(i) - len(token)) <= 2 and i[:1].casefold() == token[:1].casefold()]
    return difflib.get_close_matches(token, near, n=limit, cutoff=0.8)


class WorkspaceIds:
    """The workspace's own user and order ids, for finding them in a question whatever their format.

    Case-insensitive ("U00042" is u00042); numbers, UUIDs, prefixed codes ("CUST-0042") and
    e-mail pseudonyms are all just ids here. ``shaped_like_user`` says whether an unknown token
    has the shape of this workspace's user ids (same letters, about as many digits), so a near
    miss ("u0042") is reported as an unknown user with suggestions rather than ignored.
    """

    def __init__(self, users: frozenset[str], orders: frozenset[str]) -> None:
        self.users = users
        self.orders = orders
        self._users = {u.casefold(): u for u in users}
        self._orders = {o.casefold(): o for o in orders}
        self.numeric_users = bool(users) and all(u.isdigit() for u in list(users)[:200])
        self._shapes = {_shape(u) for u in list(users)[:2000]}

    def user(self, token: str) -> str | None:
        return self._users.get(token.casefold())

    def order(self, token: str) -> str | None:
        return self._orders.get(token.casefold())

    def shaped_like_user(self, token: str) -> bool:
        letters, digits = _shape(token)
        return bool(digits) and any(letters == l and abs(digits - d) <= 2 for l, d in self._shapes if l)


def _shape(token: str) -> tuple[str, int]:
    """An id's letters (lowercase, without digits) and its digit count: 'u00042' → ('u', 5)."""
    return re.sub(r"[^a-z]", "", token.casefold())[:8], sum(ch.isdigit() for ch in token)


def no_such_user(ctx: ToolContext, user_id: str) -> dict[str, Any]:
    """The result for an id that is not in the workspace: something the model can act on."""
    ids = ctx.user_ids()
    example = min(ids) if ids else "u00001"
    result: dict[str, Any] = {
        "error": "no such user",
        "user_id": str(user_id),
        "hint": f"user ids look like '{example}'; this workspace has {len(ids):,} users. "
        "Order ids (like o000123) go to score_risk(order_id=...).",
        "n_users": len(ids),
        "example_id": example,
    }
    if suggestions := similar_ids(str(user_id), ids):
        result["did_you_mean"] = suggestions
    return result


def no_such_order(ctx: ToolContext, order_id: str) -> dict[str, Any]:
    """The result for an order id that is not in the workspace, with the orders it may have meant."""
    ids = ctx.order_ids()
    result: dict[str, Any] = {"error": "no such order", "order_id": str(order_id),
                              "hint": "check the id, or ask about the user instead", "n_orders": len(ids)}
    if ids:
        result["example_id"] = min(ids)
    if suggestions := similar_ids(str(order_id), ids):
        result["did_you_mean"] = suggestions
    return result


def unavailable(what: str, exc: Exception) -> dict[str, Any]:
    """The result for a missing model or index: says what to run, and is logged."""
    log.info("tool unavailable: %s: %s", what, exc)
    return {"error": f"{what} unavailable", "hint": str(exc)}
