"""The `shopsight` command line: parse, call, print. No logic a test could not reach without it."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="shopsight",
    help=(
        "ShopSight: a conversational analyst for e-commerce user behaviour.\n\n"
        "Quick start:\n\n"
        "  shopsight demo                      build a demo workspace and show what is in it\n\n"
        "  shopsight datasets                  list the data formats and offline data sets\n\n"
        "  shopsight ingest events.csv --format canonical --map user_id=CustomerID\n\n"
        "Every command takes --workspace (default ./workspace, or $SHOPSIGHT_HOME).\n"
        "Set SHOPSIGHT_RAISE_ERRORS=1 to see full tracebacks."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

WorkspaceOpt = typer.Option(
    None, "--workspace", "-w", help="Workspace folder (default: $SHOPSIGHT_HOME or ./workspace).", show_default=False
)


def _user_errors() -> tuple[type[BaseException], ...]:
    from behavior.events import EventDataError
    from behavior.workspace import WorkspaceError

    return (EventDataError, WorkspaceError, ValueError, FileNotFoundError, KeyError)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one red line and exit code 2 (full traceback with SHOPSIGHT_RAISE_ERRORS=1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _user_errors() as exc:
            if os.environ.get("SHOPSIGHT_RAISE_ERRORS") == "1":
                raise
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            err_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _workspace(path: Optional[Path]):
    from behavior.workspace import Workspace

    return Workspace.at(path)


def _print_summary(summary: dict, title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key in ("events", "users", "sessions", "items", "categories", "first_event", "last_event", "revenue"):
        if key in summary:
            value = summary[key]
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    counts = summary.get("event_counts", {})
    table.add_row("by event", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    console.print(table)


def _print_report(report) -> None:
    d = report.to_dict()
    console.print(
        f"Read {d['rows_read']:,} rows from {d['source']}: kept {d['rows_kept']:,}, "
        f"duplicates dropped {d['duplicates']:,}, rejected {d['rows_rejected']:,}."
    )
    if d["naive_timestamps_as"]:
        console.print(f"[yellow]Timestamps without a time zone were read as {d['naive_timestamps_as']}.[/]")
    for r in d["rejected_reasons"]:
        rows = ", ".join(map(str, r["first_rows"]))
        console.print(f"[yellow]  {r['count']:,} rows rejected, column '{r['column']}': {r['reason']} (rows {rows} …)[/]")


@app.command()
@friendly_errors
def demo(
    workspace: Optional[Path] = WorkspaceOpt,
    users: int = typer.Option(5000, min=10, help="Number of synthetic users."),
    days: int = typer.Option(120, min=14, help="Days of history to simulate."),
    seed: int = typer.Option(7, help="Random seed: the same seed gives the same data."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Create the demo workspace (a synthetic shop with ground-truth labels) and summarize it.

    Example: shopsight demo --users 2000 --workspace /tmp/shop
    """
    from behavior.demo import build_demo_workspace

    ws = _workspace(workspace)
    summary = build_demo_workspace(ws, users=users, days=days, seed=seed, progress=not as_json)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_summary(summary["summary"], f"Demo workspace {ws.root}")
    rates = summary.get("label_rates", {})
    if rates:
        console.print("Ground-truth labels: " + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()))


@app.command()
@friendly_errors
def ingest(
    file: Optional[Path] = typer.Argument(None, help="CSV/TSV/Parquet file (omit for a data set a package ships, e.g. --format cdnow)."),
    fmt: str = typer.Option("canonical", "--format", "-f", help="Input format; see `shopsight datasets`."),
    map_: list[str] = typer.Option([], "--map", "-m", help="Rename a column: CANONICAL=SOURCE, e.g. user_id=CustomerID. Repeatable."),
    strict: bool = typer.Option(False, "--strict", help="Refuse the file on the first unusable or duplicate row."),
    tz: str = typer.Option("UTC", "--tz", help="Time zone of timestamps that carry none."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CSV input."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the ingest report as JSON."),
) -> None:
    """Validate a file, report what could not be used, and store it as the workspace's events.

    Examples:

      shopsight ingest events.csv --map user_id=CustomerID --map ts=InvoiceDate

      shopsight ingest online_retail_II.csv --format online_retail

      shopsight ingest --format cdnow          (uses the copy shipped by PyPI `lifetimes`)
    """
    from behavior.events import parse_mapping
    from behavior.ingest import ingest_file

    ws = _workspace(workspace)
    events, report = ingest_file(
        ws, file, fmt=fmt, mapping=parse_mapping(map_), strict=strict, tz=tz, encoding=encoding
    )
    if as_json:
        print(json.dumps({"report": report.to_dict(), "summary": ws.read_manifest().get("summary")}, indent=2))
        return
    _print_report(report)
    if report.rows_rejected:
        console.print(f"Rejected rows with their reasons are in {ws.rejected_dir}/.")
    _print_summary(ws.read_manifest()["summary"], f"Workspace {ws.root}")


@app.command()
@friendly_errors
def datasets(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the input formats and which data sets are available offline (shipped by installed packages)."""
    from behavior.adapters import ADAPTERS

    rows = []
    for a in ADAPTERS.values():
        path = a.packaged_path() if a.packaged_path else None
        rows.append({"format": a.name, "title": a.title, "offline": str(path) if path else "", "description": a.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Formats and data sets")
    for col in ("format", "title", "offline copy", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["format"], r["title"], r["offline"] or "-", r["description"])
    console.print(table)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
