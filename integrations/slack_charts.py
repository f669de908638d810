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

from shopsight.agent.types import ToolCall

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


# --- charts of query_metric results: bars for groups, a line over time, funnel bars, a cohort heat map ---
def is_query_result(result: Any) -> bool:
    """A metric query's result (``tools.query_metric``): a metric, its rows and its total."""
    return (isinstance(result, dict) and "error" not in result and isinstance(result.get("metric"), str)
            and isinstance(result.get("rows"), list) and isinstance(result.get("total"), dict))


def _png(fig: Any) -> bytes:
    for side in ("top", "right"):
        for ax in fig.axes:
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_bars_png(labels: Sequence[str], values: Sequence[float], texts: Sequence[str], title: str, xlabel: str,
                    percent: bool = False) -> bytes:
    """Horizontal bars in the order given (the first at the top), each labelled with its value as answers show it."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    with _RENDER_LOCK:
        fig = Figure(figsize=(6.4, 1.3 + 0.32 * len(labels)), dpi=100)
        ax = fig.add_subplot()
        bars = ax.barh(list(labels)[::-1], list(values)[::-1], color="#1565c0")
        ax.bar_label(bars, labels=list(texts)[::-1], fontsize=8, padding=3)
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, max(values, default=0) * 1.25 or 1)
        ax.xaxis.set_major_formatter(FuncFormatter((lambda v, _: f"{v:.0%}") if percent else (lambda v, _: f"{v:,.0f}")))
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(title, fontsize=10)
        return _png(fig)


def render_line_png(periods: Sequence[str], values: Sequence[float], title: str, ylabel: str, partial: Sequence[bool],
                    percent: bool = False) -> bytes:
    """A line over time; partial periods (cut by the window or the end of the data) as hollow points."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    with _RENDER_LOCK:
        fig = Figure(figsize=(6.4, 3.0), dpi=100)
        ax = fig.add_subplot()
        x = list(range(len(periods)))
        ax.plot(x, values, color="#1565c0", marker="o", markersize=4)
        hollow = [i for i, p in enumerate(partial) if p]
        if hollow:
            ax.plot(hollow, [values[i] for i in hollow], linestyle="none", marker="o", markersize=7, markerfacecolor="white",
                    markeredgecolor="#1565c0", label="partial period")
            ax.legend(fontsize=8, frameon=False)
        step = max(1, -(-len(periods) // 8))  # at most eight labels
        ax.set_xticks(x[::step], [_short_period(p) for p in periods][::step], fontsize=8)
        if percent:
            spread = (max(values) - min(values)) if values else 0.0
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1%}" if spread < 0.05 else f"{v:.0%}"))
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        return _png(fig)


def _short_period(period: str) -> str:
    """"2026-03-02" → "Mar 02", "2026-03" → "Mar 2026": tick labels that do not collide."""
    try:
        ts = pd.Timestamp(period if len(period) > 7 else period + "-01")
    except ValueError:
        return period
    return f"{ts:%b %d}" if len(period) > 7 else f"{ts:%b %Y}"


def render_funnel_png(steps: Sequence[tuple[str, int]], title: str) -> bytes:
    """Funnel bars, widest first, each with its count and the share of the step before."""
    from matplotlib.figure import Figure

    names = [n for n, _ in steps]
    counts = [c for _, c in steps]
    texts = [f"{c:,}" + (f"  ({c / counts[i - 1]:.1%} of {names[i - 1]})" if i and counts[i - 1] else "") for i, c in enumerate(counts)]
    with _RENDER_LOCK:
        fig = Figure(figsize=(6.4, 2.8), dpi=100)
        ax = fig.add_subplot()
        top = max(counts, default=0) or 1
        y = list(range(len(counts)))[::-1]
        lefts = [(top - c) / 2 for c in counts]
        ax.barh(y, counts, left=lefts, color=["#90caf9", "#42a5f5", "#1e88e5", "#0d47a1"][: len(counts)], height=0.7)
        for yi, c, left, t in zip(y, counts, lefts, texts):
            ax.text(left + c + top * 0.01, yi, t, ha="left", va="center", fontsize=8)  # beside the bar: readable on any width
        ax.set_yticks(y, names, fontsize=9)
        ax.set_xticks([])
        ax.set_xlim(0, top * 1.45)
        ax.spines["bottom"].set_visible(False)
        ax.set_title(title, fontsize=10)
        return _png(fig)


def render_heatmap_png(cohorts: Sequence[str], rates: Sequence[Sequence[float | None]], title: str, unit: str,
                       partial: Sequence[Sequence[bool]] = ()) -> bytes:
    """A cohort × period heat map of retention rates (blank where a period is not in the data yet; * partial)."""
    import numpy as np
    from matplotlib.figure import Figure

    width = max((len(r) for r in rates), default=0)
    grid = np.full((len(cohorts), width), np.nan)
    for i, row in enumerate(rates):
        for k, v in enumerate(row):
            if v is not None:
                grid[i, k] = v
    with _RENDER_LOCK:
        fig = Figure(figsize=(1.6 + 0.7 * max(width, 3), 1.2 + 0.42 * len(cohorts)), dpi=100)
        ax = fig.add_subplot()
        image = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(len(cohorts)):
            for k in range(width):
                if not np.isnan(grid[i, k]):
                    cut = i < len(partial) and k < len(partial[i]) and partial[i][k]
                    ax.text(k, i, f"{grid[i, k]:.0%}" + ("*" if cut else ""), ha="center", va="center", fontsize=7,
                            color="white" if grid[i, k] > 0.6 else "black")
        ax.set_xticks(range(width), [f"{unit} {k}" for k in range(width)], fontsize=8)
        ax.set_yticks(range(len(cohorts)), list(cohorts), fontsize=8)
        ax.set_title(title, fontsize=10)
        if any(any(row) for row in partial):
            ax.set_xlabel("* partial: the period runs past the end of the data", fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.04, format="{x:.0%}")
        for side in ("bottom", "left"):
            ax.spines[side].set_visible(False)
        return _png(fig)


def _rate_metric(metric: str) -> bool:
    from shopsight.tools.query_metric import value_text

    return value_text(metric, 0.5).endswith("%")


def query_chart(result: Mapping[str, Any]) -> Chart | None:
    """The chart of a metric query's result: a heat map for retention, funnel bars for a funnel, a line
    over days/weeks/months, bars for other groups, two bars for a period comparison; None for one number."""
    from shopsight.tools.query_metric import metric_title, value_text

    metric, gb = str(result["metric"]), result.get("group_by")
    rows = [r for r in result["rows"] if isinstance(r, dict)]
    title = metric_title(result)
    label = title.split(" by ")[0]
    if metric == "retention":
        with_periods = [r for r in rows if r.get("periods")]
        if not with_periods:
            return None
        unit = "week" if gb == "cohort_week" else "month"
        cells = [sorted(r["periods"], key=lambda c: c["period"]) for r in with_periods]
        png = render_heatmap_png([str(r.get("group")) for r in with_periods], [[c.get("rate") for c in row] for row in cells], title, unit,
                                 [[bool(c.get("partial")) for c in row] for row in cells])
        return Chart(png, f"retention-{_slug(str(gb))}.png", title, f"{title}: {len(with_periods)} cohorts")
    if metric == "funnel":
        steps = result["total"].get("steps") or []
        if not steps:
            return None
        names = {"view": "viewed", "cart": "added to cart", "checkout": "checkout", "purchase": "purchased"}
        title = "View → cart → checkout → purchase funnel"
        png = render_funnel_png([(names.get(s["step"], s["step"]), int(s["sessions"])) for s in steps], title)
        return Chart(png, "funnel.png", title, f"{title}: {steps[0]['sessions']:,} sessions with a view, {steps[-1]['sessions']:,} purchased")
    valued = [r for r in rows if isinstance(r.get("value"), (int, float)) and not isinstance(r.get("value"), bool)]
    if gb in ("day", "week", "month"):
        if len(valued) < 2:
            return None
        partial = set(result.get("partial") or [])
        values = [float(r["value"]) for r in valued]
        png = render_line_png([str(r["group"]) for r in valued], values, title, label, [str(r["group"]) in partial for r in valued],
                              percent=_rate_metric(metric))
        return Chart(png, f"trend-{_slug(title)}.png", title,
                     f"{title}: {value_text(metric, values[0])} ({valued[0]['group']}) to {value_text(metric, values[-1])} ({valued[-1]['group']})")
    if gb:
        if len(valued) < 2:
            return None
        valued = valued[:MAX_BARS]
        labels = [str(r["group"]).replace("_", " ") if r.get("group") is not None else "none" for r in valued]
        png = render_bars_png(labels, [float(r["value"]) for r in valued], [value_text(metric, r["value"]) for r in valued], title, label,
                              percent=_rate_metric(metric))
        return Chart(png, f"groups-{_slug(title)}.png", title, f"{title}: {labels[0]} {value_text(metric, valued[0]['value'])}")
    total, prev = result["total"], result["total"].get("previous")
    if prev and isinstance(prev.get("value"), (int, float)) and isinstance(total.get("value"), (int, float)):
        cites = result.get("citations") or {}
        labels = [f"{cites.get('previous_since')} to {cites.get('previous_until')}", f"{cites.get('since')} to {cites.get('until')}"]
        values = [float(prev["value"]), float(total["value"])]
        title = f"{label}: this period and the one before"
        png = render_bars_png(labels, values, [value_text(metric, v) for v in values], title, label, percent=_rate_metric(metric))
        return Chart(png, f"compare-{_slug(label)}.png", title, f"{title}: {value_text(metric, values[0])} then {value_text(metric, values[1])}")
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "chart"


def chart_for_tool_call(name: str, args: Mapping[str, Any], result: Any) -> Chart | None:
    """The chart that helps read one tool result, or None when a chart would not help.

    A metric query's result gets its own chart (:func:`query_chart`); otherwise a list of at
    least two sessions with start times gives an activity chart, and a list of at least two rows
    with an id and a score gives a ranking chart.
    """
    data = result
    if isinstance(data, dict) and data.get("error"):
        return None
    if is_query_result(data):
        return query_chart(data)
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
