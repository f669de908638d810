"""Small PNG charts for Slack answers, drawn from the tool results an answer was built on.

Charts are recognised by the *shape* of a tool result, not by the tool's name, so a new
tool that returns sessions with a ``start`` day or ranked rows with a ``probability`` gets a
chart without changes here. Nothing here talks to Slack.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from agent.types import ToolCall

TIME_KEYS = ("start", "ts", "date", "day", "started_at")
ID_KEYS = ("user_id", "order_id", "session_id", "item_id", "category", "segment", "cohort")
SCORE_KEYS = ("probability", "score", "risk_score", "churn_probability", "intent_probability", "proba", "risk")
MAX_BARS = 15
# Weekly bars once the sessions span more than this many days, so a chart stays readable.
DAILY_SPAN_DAYS = 45

# matplotlib's font cache and text layout are shared state; Slack answers are drawn from
# several worker threads, so rendering is serialised (a chart takes a few milliseconds).
_RENDER_LOCK = threading.Lock()


@dataclass(frozen=True)
class Chart:
    """A rendered chart ready to upload: PNG bytes, a file name, a title and alt text."""

    png: bytes
    filename: str
    title: str
    alt_text: str


def _rows_with(result: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The first list of dicts in ``result`` (itself or one of its values) whose rows carry one of ``keys``."""
    candidates: list[Any] = [result]
    if isinstance(result, dict):
        candidates += [v for v in result.values() if isinstance(v, list)]
    for rows in candidates:
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            if any(k in rows[0] for k in keys):
                return rows
    return []


def activity_counts(sessions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Sessions per day (or per week for long spans), split into purchase and no-purchase.

    Args:
        sessions: Rows with a start time under one of ``TIME_KEYS`` and optionally ``purchased``.

    Returns:
        A frame indexed by period start (UTC, tz-naive) with int columns ``purchase`` and
        ``no purchase``, one row per period from the first to the last session (gaps as 0).
        Empty when no row has a readable time.
    """
    key = next((k for k in TIME_KEYS if any(k in s for s in sessions)), None)
    if key is None:
        return pd.DataFrame(columns=["purchase", "no purchase"], dtype="int64")
    starts = pd.to_datetime(pd.Series([s.get(key) for s in sessions]), utc=True, errors="coerce", format="mixed")
    bought = pd.Series([bool(s.get("purchased", False)) for s in sessions])
    ok = starts.notna()
    starts, bought = starts[ok].dt.tz_localize(None), bought[ok]
    if starts.empty:
        return pd.DataFrame(columns=["purchase", "no purchase"], dtype="int64")
    span_days = (starts.max() - starts.min()).days
    # Weeks run Monday to Sunday (pandas names a weekly period by its last day).
    freq = "W-SUN" if span_days > DAILY_SPAN_DAYS else "D"
    period = starts.dt.to_period(freq).dt.start_time
    frame = pd.DataFrame({"period": period, "purchase": bought.astype("int64"), "no purchase": (~bought).astype("int64")})
    counts = frame.groupby("period").sum()
    full = pd.period_range(period.min(), period.max(), freq=freq).start_time
    return counts.reindex(full, fill_value=0).astype("int64")


def score_ranking(rows: Sequence[Mapping[str, Any]], limit: int = MAX_BARS) -> tuple[list[tuple[str, float]], str]:
    """Ranked (label, score) pairs, highest first, and the name of the score used.

    Args:
        rows: Rows with an id under one of ``ID_KEYS`` and a number under one of ``SCORE_KEYS``.
        limit: At most this many pairs.

    Returns:
        The pairs and the score's key; ``([], "")`` when the rows carry no usable score.
    """
    if not rows:
        return [], ""
    id_key = next((k for k in ID_KEYS if k in rows[0]), None)
    score_key = next((k for k in SCORE_KEYS if isinstance(rows[0].get(k), (int, float))), None)
    if id_key is None or score_key is None:
        return [], ""
    pairs = [
        (str(r[id_key]), float(r[score_key]))
        for r in rows
        if isinstance(r.get(score_key), (int, float)) and not isinstance(r.get(score_key), bool)
    ]
    pairs.sort(key=lambda p: (-p[1], p[0]))
    return pairs[:limit], score_key


def render_activity_png(counts: pd.DataFrame, title: str) -> bytes:
    """A stacked bar chart of sessions per period (purchase sessions in a second colour)."""
    from matplotlib.figure import Figure  # imported late: matplotlib takes a second to load

    with _RENDER_LOCK:
        fig = Figure(figsize=(6.4, 2.8), dpi=100)
        ax = fig.add_subplot()
        x = range(len(counts))
        ax.bar(x, counts["no purchase"], color="#9aa5b1", label="no purchase")
        ax.bar(x, counts["purchase"], bottom=counts["no purchase"], color="#2e7d32", label="purchase")
        step = max(1, len(counts) // 8)
        ax.set_xticks(list(x)[::step], [d.strftime("%b %d") for d in counts.index][::step], fontsize=8)
        ax.set_ylabel("sessions")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def render_ranking_png(ranking: Sequence[tuple[str, float]], title: str, xlabel: str) -> bytes:
    """A horizontal bar chart of scores, the highest at the top."""
    from matplotlib.figure import Figure

    labels = [label for label, _ in ranking][::-1]
    values = [value for _, value in ranking][::-1]
    is_probability = all(0.0 <= v <= 1.0 for v in values)
    with _RENDER_LOCK:
        fig = Figure(figsize=(6.4, 1.3 + 0.3 * len(ranking)), dpi=100)
        ax = fig.add_subplot()
        bars = ax.barh(labels, values, color="#c62828")
        ax.bar_label(bars, fmt=(lambda v: f"{v:.1%}") if is_probability else "%.3g", fontsize=8, padding=3)
        ax.set_xlabel(xlabel)
        if is_probability:
            ax.set_xlim(0, 1.12)  # room for the value labels
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(title, fontsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "chart"


def chart_for_tool_call(name: str, args: Mapping[str, Any], result: Any) -> Chart | None:
    """The chart that helps read one tool result, or None when a chart would not help.

    A list of at least two sessions with start times gives an activity chart; a list of at
    least two rows with an id and a score gives a ranking chart.
    """
    data = result
    if isinstance(data, dict) and data.get("error"):
        return None
    sessions = _rows_with(data, TIME_KEYS)
    if len(sessions) >= 2:
        counts = activity_counts(sessions)
        if counts.sum().sum() >= 2:
            who = (data.get("user_id") if isinstance(data, dict) else None) or args.get("user_id")
            title = f"Sessions of user {who}" if who else "Sessions over time"
            n = int(counts.sum().sum())
            return Chart(
                png=render_activity_png(counts, title),
                filename=f"activity-{_slug(str(who or name))}.png",
                title=title,
                alt_text=f"{title}: {n} sessions from {counts.index.min():%Y-%m-%d} to {counts.index.max():%Y-%m-%d}",
            )
    rows = _rows_with(data, ID_KEYS)
    ranking, score_key = score_ranking(rows)
    if len(ranking) >= 2:
        metric = (data.get("metric") if isinstance(data, dict) else None) or args.get("metric") or score_key
        title = f"Top {len(ranking)} by {metric}"
        return Chart(
            png=render_ranking_png(ranking, title, xlabel=" ".join(dict.fromkeys([str(metric), score_key])).replace("_", " ")),
            filename=f"ranking-{_slug(str(metric))}.png",
            title=title,
            alt_text=f"{title}: highest {ranking[0][0]} at {ranking[0][1]:.3g}",
        )
    return None


def charts_for_tool_calls(tool_calls: Iterable[ToolCall], limit: int = 2) -> list[Chart]:
    """Charts for an answer's tool calls, at most ``limit``."""
    charts: list[Chart] = []
    for call in tool_calls:
        if len(charts) >= limit:
            break
        chart = chart_for_tool_call(call.name, dict(call.args), call.result)
        if chart is not None:
            charts.append(chart)
    return charts
