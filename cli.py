"""The `shopsight` command line: parse, call, print. No logic a test could not reach without it."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shopsight import refuse_top_level_import

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
    from shopsight.agent.backends import BackendError
    from shopsight.behavior.events import EventDataError
    from shopsight.behavior.workspace import WorkspaceError
    from shopsight.prompts import PromptError

    from shopsight.index.embedder import EmbedderError
    from shopsight.index.store import SessionIndexError

    return (EventDataError, WorkspaceError, SessionIndexError, EmbedderError, BackendError, PromptError,
            ValueError, FileNotFoundError, KeyError)


def _settings(**overrides: Any):
    """The one Settings object: CLI flags (given here) beat environment variables beat defaults."""
    from shopsight.agent.settings import Settings

    settings = Settings.from_env(**overrides)
    if settings.embed_precision != "auto":  # the embedder is process-wide: tell it once, before it loads
        from shopsight.index.embedder import set_default_precision

        set_default_precision(settings.embed_precision)
    return settings


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """The one CLI error wrapper: expected errors become one red line and exit code 2.

    SHOPSIGHT_RAISE_ERRORS=1 shows the full traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _user_errors() as exc:
            if _settings().raise_errors:
                raise
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        except OSError as exc:
            from shopsight.behavior.workspace import NOT_WRITABLE

            # Permissions and read-only disks are the user's to fix (a file or folder of theirs);
            # any other OSError is unexpected and keeps its traceback.
            if _settings().raise_errors or exc.errno not in NOT_WRITABLE:
                raise
            # A temp file that could not be made does not exist: name its folder instead.
            where = exc.filename and (exc.filename if Path(exc.filename).exists() else Path(exc.filename).parent)
            message = f"cannot write {where or 'a file'} ({exc.strerror}): fix its permissions, or pass a writable folder with --workspace"
        err_console.print(f"[bold red]Error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None

    return wrapper


def _workspace(path: Optional[Path]):
    from shopsight.behavior.workspace import Workspace

    return Workspace.at(path or _settings().home)


def _writer(ws, command: str):
    """The workspace's writer lock, waiting as long as the settings say ($SHOPSIGHT_LOCK_TIMEOUT_S)."""
    return ws.writer(command, timeout=_settings().lock_timeout_s)


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
        f"duplicates dropped {d['duplicates']:,}, already stored {d.get('already_stored', 0):,}, rejected {d['rows_rejected']:,}."
    )
    if d["naive_timestamps_as"]:
        console.print(f"[yellow]Timestamps without a time zone were read as {d['naive_timestamps_as']}.[/]")
    for r in d["rejected_reasons"]:
        rows = ", ".join(map(str, r["first_rows"]))
        console.print(f"[yellow]  {r['count']:,} rows rejected, column '{r['column']}': {r['reason']} (rows {rows} …)[/]")
    for note, count in d.get("notes", {}).items():
        console.print(f"  {count:,} {note}")


@app.command()
@friendly_errors
def demo(
    workspace: Optional[Path] = WorkspaceOpt,
    users: int = typer.Option(5000, min=10, help="Number of synthetic users."),
    days: int = typer.Option(120, min=14, help="Days of history to simulate."),
    seed: int = typer.Option(7, help="Random seed: the same seed gives the same data."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    no_index: bool = typer.Option(False, "--no-index", help="Skip building the session index (the slowest step: it embeds every session; `shopsight index build` does it later)."),
    no_train: bool = typer.Option(False, "--no-train", help="Skip training the intent, churn, risk and recommend models."),
    no_ask: bool = typer.Option(False, "--no-ask", help="Skip the three sample questions to the local agent at the end."),
) -> None:
    """Create the demo workspace (a synthetic shop with ground-truth labels) and summarize it.

    Example: shopsight demo --users 2000 --workspace /tmp/shop
    """
    from shopsight.behavior.demo import build_demo_workspace

    ws = _workspace(workspace)
    summary = build_demo_workspace(ws, users=users, days=days, seed=seed, progress=not as_json)
    if not no_index:  # the session index over the new events (issue 4)
        built_index = _build_index(_session_index(ws.root, None), show_progress=not as_json)
        summary["index"] = built_index.to_dict()
        if not as_json:
            _print_build(built_index)
    if not no_train:  # the three models on the new events (issue 3); `shopsight train` retrains
        from shopsight.behavior.models.common import TrainSettings

        trained = _train_with_progress(ws, train_targets("all"), settings=TrainSettings(), show=not as_json, keep_going=True)
        summary["models"] = [
            {k: r.get(k) for k in ("name", "version", "train_seconds", "error")} | {"metrics": r["card"].get("metrics")} for r in trained
        ]
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    _print_summary(summary["summary"], f"Demo workspace {ws.root}")
    rates = summary.get("label_rates", {})
    if rates:
        console.print(
            f"Ground-truth labels in {ws.labels_dir}: {rates['dropout']:.1%} of users drop out, "
            f"{rates['fraud_users']:.1%} are fraudulent, {rates['purchase_sessions']:.1%} of sessions end in a purchase."
        )
    for m in summary.get("models", []):
        if m.get("error"):
            console.print(f"[yellow]{m['name']} not trained: {m['error']}[/]")
        else:
            console.print(f"Trained {m['name']} {m['version']} in {_fmt(m['train_seconds'], 1)} s: `shopsight models` compares it with its baselines.")
    if not no_ask:  # finish with one question per model to the local agent (issue 5)
        _demo_ask(ws)


@app.command()
@friendly_errors
def ingest(
    file: Optional[str] = typer.Argument(None, help="A CSV/TSV/Parquet file, a folder of them, or a quoted glob like 'exports/*.csv' (omit for a data set a package ships, e.g. --format cdnow).", show_default=False),
    fmt: str = typer.Option("canonical", "--format", "-f", help="Input format; see `shopsight datasets`."),
    map_: list[str] = typer.Option([], "--map", "-m", help="Rename a column: CANONICAL=SOURCE, e.g. user_id=CustomerID. Repeatable."),
    strict: bool = typer.Option(False, "--strict", help="Refuse the input on the first unusable or duplicate row (e.g. a purchase of quantity 0, a NUL byte in a field)."),
    replace: bool = typer.Option(False, "--replace", help="Start over: discard every stored event (the count is reported) and keep only this input."),
    tz: Optional[str] = typer.Option(None, "--tz", help="Time zone of timestamps that carry none (default: the format's own; UTC for most, Europe/London for online_retail).", show_default=False),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CSV input."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Refuse a file with more rows (default 20,000,000; $SHOPSIGHT_INGEST_MAX_ROWS).", show_default=False),
    max_memory_mb: Optional[int] = typer.Option(None, "--max-memory-mb", min=1, help="Refuse a file estimated to need more memory (default 4096; $SHOPSIGHT_INGEST_MAX_MEMORY_MB).", show_default=False),
    max_text_chars: Optional[int] = typer.Option(None, "--max-text-chars", min=1, help="Cut longer free-text fields, counted in the report (default 2000; $SHOPSIGHT_INGEST_MAX_TEXT_CHARS).", show_default=False),
    from_url: Optional[str] = typer.Option(None, "--from", help="Read from a PostgreSQL database instead of a file: postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the password is never printed or stored).", show_default=False),
    table: Optional[str] = typer.Option(None, "--table", help="With --from: the table to read (schema.table for another schema).", show_default=False),
    query: Optional[str] = typer.Option(None, "--query", help="With --from: a SELECT to read instead of a table; runs in a READ ONLY transaction.", show_default=False),
    since_column: Optional[str] = typer.Option(None, "--since-column", help="With --from: pull incrementally: only rows whose COLUMN is at or past the last pull's watermark (kept per source in the manifest).", show_default=False),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the ingest report as JSON."),
) -> None:
    """Validate input, report what could not be used, and append it to the workspace's events as one batch.

    Events already stored (same user, time, event, item, session and order) are counted, not
    stored twice, so re-running an ingest is safe. `shopsight batches` lists the batches;
    `shopsight batches undo ID` removes one. One writer at a time: a second ingest waits for
    the first ($SHOPSIGHT_LOCK_TIMEOUT_S, default 30 s).

    Examples:

      shopsight ingest events.csv --map user_id=CustomerID --map ts=InvoiceDate

      shopsight ingest exports/                 (every CSV/Parquet file in the folder, one batch)

      shopsight ingest 'exports/2026-*.csv'     (a glob: quote it)

      shopsight ingest day1.csv --replace       (start over with this file)

      shopsight ingest online_retail_II.csv --format online_retail

      shopsight ingest --format cdnow          (uses the copy shipped by PyPI `lifetimes`)

      shopsight ingest --from postgresql://shop@127.0.0.1:5432/shop --table events --since-column ts

      (a database table; run it again to pull only the rows at or past the last pull's ts: the rows at
      that exact ts are read again and dropped as already stored, so none is lost or stored twice)

      shopsight ingest --from postgresql://shop@db/shop --query "select * from events where shop_id = 3"
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shopsight.behavior.events import parse_mapping
    from shopsight.behavior.ingest import ingest_database, ingest_file

    if from_url is None and (table or query or since_column):
        raise typer.BadParameter("--table, --query and --since-column go with --from postgresql://…", param_hint="--from")
    if from_url is not None and file is not None:
        raise typer.BadParameter(f"give a FILE or --from, not both (FILE was {file!r})", param_hint="--from")
    if from_url is not None and fmt != "canonical":
        raise typer.BadParameter("a database's rows are read as canonical columns (rename with --map), not --format", param_hint="--format")
    ws = _workspace(workspace)
    settings = _settings(ingest_max_rows=max_rows, ingest_max_memory_mb=max_memory_mb, ingest_max_text_chars=max_text_chars)
    with Progress(
        TextColumn("[bold]Reading[/] {task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
        TimeElapsedColumn(), console=err_console, transient=True, disable=as_json,
    ) as bar:
        task = bar.add_task("read", total=None, name="")

        def on_progress(done: int, total: int, where: Path | str) -> None:
            bar.update(task, completed=done, total=max(total, done), name=where.name if isinstance(where, Path) else where)

        if from_url is not None:
            _, report = ingest_database(
                ws, from_url, table=table, query=query, since_column=since_column, mapping=parse_mapping(map_), strict=strict,
                tz=tz or "UTC", limits=settings.ingest_limits(), replace=replace, lock_timeout=settings.lock_timeout_s,
                on_progress=on_progress, return_events=False,
            )
        else:
            _, report = ingest_file(
                ws, file, fmt=fmt, mapping=parse_mapping(map_), strict=strict, tz=tz, encoding=encoding,
                limits=settings.ingest_limits(), replace=replace, lock_timeout=settings.lock_timeout_s, on_progress=on_progress,
                return_events=False,
            )
    manifest = ws.read_manifest()
    if as_json:
        print(json.dumps({"report": report.to_dict(), "summary": manifest.get("summary")}, indent=2))
        return
    _print_report(report)
    if report.replaced_events is not None:
        console.print(f"[yellow]--replace discarded {report.replaced_events:,} stored events.[/]")
    batch = next((b for b in manifest.get("batches", []) if b["id"] == report.batch), {})
    if batch.get("rejected_file"):
        console.print(f"Rejected rows with their reasons are in {ws.root / batch['rejected_file']}.")
    mark = batch.get("watermark")
    if mark:
        console.print(f"Watermark of {mark['column']}: {mark['value']} (the next pull reads from there).")
    console.print(f"Batch {report.batch}: {report.rows_kept:,} new events. Undo it with `shopsight batches undo {report.batch}`.")
    if manifest.get("summary"):
        _print_summary(manifest["summary"], f"Workspace {ws.root}")


batches_app = typer.Typer(
    help="The workspace's ingest batches: list them, or undo one.\n\n"
    "  shopsight batches\n\n"
    "  shopsight batches undo 3",
    invoke_without_command=True,
)
app.add_typer(batches_app, name="batches")


@batches_app.callback()
@friendly_errors
def batches(
    ctx: typer.Context,
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the ingest batches: id, when, source, and rows accepted, rejected and duplicate.

    Examples:

      shopsight batches --workspace /tmp/shop

      shopsight batches undo 3 --workspace /tmp/shop
    """
    if ctx.invoked_subcommand is not None:
        return
    from shopsight.behavior.ingest import batch_list

    ws = _workspace(workspace)
    rows = batch_list(ws)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"No events in {ws.root}: add some with `shopsight ingest FILE --workspace {ws.root}`.")
        return
    table = Table(title=f"Batches in {ws.root}")
    for col, justify in (("id", "right"), ("time (UTC)", "left"), ("source", "left"), ("accepted", "right"),
                         ("rejected", "right"), ("duplicate", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for b in rows:
        source = str(b.get("source", "-"))  # a file by its name (the full path: --json)
        table.add_row(str(b["id"]), str(b.get("time", "-")), source if " " in source else Path(source).name, f"{b.get('accepted', 0):,}",
                      f"{b.get('rejected', 0):,}", f"{b.get('duplicate', 0):,}")
    console.print(table)
    console.print(f"{sum(b.get('accepted', 0) for b in rows):,} events in {len(rows)} batches.")


@batches_app.command("undo")
@friendly_errors
def batches_undo(
    batch_id: int = typer.Argument(..., help="The batch to remove, as `shopsight batches` lists it."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Remove one batch's events (and its rejected rows); the other batches stay as they are.

    Example: shopsight batches undo 3 --workspace /tmp/shop
    """
    from shopsight.behavior.ingest import undo_batch

    ws = _workspace(workspace)
    record = undo_batch(ws, batch_id, lock_timeout=_settings().lock_timeout_s)
    summary = ws.read_manifest().get("summary") or {}
    console.print(
        f"Removed batch {record['id']} ({record.get('source')}): {record.get('accepted', 0):,} events; "
        f"{summary.get('events', 0):,} events remain."
    )


@app.command()
@friendly_errors
def datasets(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the input formats and which data sets are available offline (shipped by installed packages).

    Examples:

      shopsight datasets

      shopsight ingest --format cdnow --workspace /tmp/cdnow     (an offline copy: no FILE needed)

      shopsight ingest online_retail_II.csv --format online_retail
    """
    from shopsight.behavior.adapters import ADAPTERS

    rows = []
    for a in ADAPTERS.values():
        path = a.packaged_path() if a.packaged_path else None
        rows.append({"format": a.name, "title": a.title, "offline": str(path) if path else "", "description": a.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Formats (--format) and the data sets installed packages ship offline")
    table.add_column("format", style="bold", no_wrap=True)
    table.add_column("data set", ratio=1)
    table.add_column("offline copy", ratio=1, overflow="fold")
    table.add_column("reads", ratio=3)
    for r in rows:
        # The part after site-packages names the package that ships the file.
        offline = r["offline"].split("site-packages/")[-1] if r["offline"] else "-"
        table.add_row(r["format"], r["title"], offline, r["description"])
    console.print(table)
    console.print("Paths in full: shopsight datasets --json", style="dim")


# --- eval: scripted question sets (evals/) ---------------------------------------------------
eval_app = typer.Typer(
    help="Scripted evaluation question sets: run one against the agent, compare two runs.\n\n"
    "  shopsight eval run evals/demo.yaml --min-tool-accuracy 0.9 --min-faithfulness 1\n\n"
    "  shopsight eval diff runs/A/report.json runs/B/report.json",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


@eval_app.command("run")
@friendly_errors
def eval_run(
    set_path: Path = typer.Argument(..., help="A YAML question set, e.g. evals/demo.yaml."),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b",
        help="local | openai (default: $SHOPSIGHT_BACKEND, else local); oracle calls exactly the expected tools, to check the set itself.",
    ),
    report: Optional[Path] = typer.Option(None, "--report", "-r", help="Folder for report.json and report.md (default: WORKSPACE/runs/evals/RUN_ID)."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="Only cases with this tag. Repeatable."),
    case: list[str] = typer.Option([], "--case", "-c", help="Only the case with this id. Repeatable."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many cases."),
    min_pass_rate: Optional[float] = typer.Option(None, help="Fail (exit 1) below this share of cases passed."),
    min_tool_accuracy: Optional[float] = typer.Option(None, help="Fail below this tool-selection accuracy (0-1)."),
    min_argument_accuracy: Optional[float] = typer.Option(None, help="Fail below this argument accuracy (0-1)."),
    min_faithfulness: Optional[float] = typer.Option(None, help="Fail below this share of answers with every number from a tool."),
    min_fact_recall: Optional[float] = typer.Option(None, help="Fail below this required-fact recall (0-1)."),
    min_refusal_accuracy: Optional[float] = typer.Option(None, help="Fail below this refusal accuracy (0-1)."),
    max_personal_data_leaks: Optional[int] = typer.Option(None, help="Fail above this many answers with personal data."),
    max_p95_latency: Optional[float] = typer.Option(None, help="Fail above this p95 latency in seconds."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run a question set against the agent; write a Markdown and a JSON report; exit 1 below the thresholds.

    Example: shopsight eval run evals/demo.yaml --workspace /tmp/shop --min-tool-accuracy 0.9 --min-faithfulness 1
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shopsight.evals.backends import make_answerer, system_prompt_text
    from shopsight.evals.report import TOTALS, format_total, write_report
    from shopsight.evals.roles import RoleResolver
    from shopsight.evals.runner import run_eval_set, threshold_failures
    from shopsight.evals.schema import load_eval_set

    ws = _workspace(workspace)
    eval_set = load_eval_set(set_path).select(tags=tag or None, ids=case or None, limit=limit)
    limits = {
        name: value
        for name, value in {
            "pass_rate": min_pass_rate,
            "tool_accuracy": min_tool_accuracy,
            "argument_accuracy": min_argument_accuracy,
            "faithfulness": min_faithfulness,
            "fact_recall": min_fact_recall,
            "refusal_accuracy": min_refusal_accuracy,
            "personal_data_leaks": max_personal_data_leaks,
            "latency_p95_s": max_p95_latency,
        }.items()
        if value is not None
    }
    answerer, meta = make_answerer(ws, backend, eval_set=eval_set)
    meta["workspace"] = str(ws.root)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=as_json, transient=True,
    ) as bar:
        task = bar.add_task(f"eval {eval_set.name}", total=len(eval_set.cases))
        run = run_eval_set(
            eval_set, answerer, resolver=RoleResolver(ws), system_prompt=system_prompt_text(), meta=meta,
            progress=lambda done, total, case_id: bar.update(task, completed=done, description=f"eval {case_id}"),
        )
    json_path, md_path = write_report(run, report or ws.runs_dir / "evals" / run.run_id)
    failures = threshold_failures(run.totals, limits)
    if as_json:
        print(json.dumps(run.to_dict() | {"threshold_failures": failures, "report": str(json_path)}, indent=2))
    else:
        failed = [c for c in run.cases if not c.passed]
        if failed:
            table = Table(title=f"{len(failed)} failing cases")
            table.add_column("case", style="bold")
            table.add_column("why", overflow="fold")
            for c in failed:
                table.add_row(c.id, escape("; ".join(c.all_reasons())))
            console.print(table)
        table = Table(title=f"{eval_set.name}: {run.totals['passed']} of {run.totals['cases']} cases passed")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, label in TOTALS:
            table.add_row(label, format_total(key, run.totals.get(key)))
        console.print(table)
        console.print(f"Reports: {md_path} and {json_path}")
        for line in failures:
            err_console.print(f"[bold red]Below threshold:[/] {line}")
    if failures:
        raise typer.Exit(code=1)


@eval_app.command("diff")
@friendly_errors
def eval_diff(
    a: Path = typer.Argument(..., help="The earlier report.json (or its folder)."),
    b: Path = typer.Argument(..., help="The later report.json (or its folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print the diff as JSON."),
) -> None:
    """Show what changed between two eval runs: totals side by side, cases now failing or passing.

    Example: shopsight eval diff workspace/runs/evals/RUN_A workspace/runs/evals/RUN_B
    """
    from shopsight.evals.report import TOTALS, diff_reports, format_total, load_report

    d = diff_reports(load_report(a), load_report(b))
    if as_json:
        print(json.dumps(d.to_dict(), indent=2))
        return
    table = Table(title=f"{d.a} → {d.b}")
    for col in ("measure", "A", "B"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    labels = dict(TOTALS)
    for name, x, y in d.totals:
        style = "" if x == y else "bold"
        table.add_row(labels[name], format_total(name, x), format_total(name, y), style=style)
    console.print(table)
    for case_id, reasons in d.broken:
        console.print(f"[red]now failing[/] {case_id}: {'; '.join(reasons)}", highlight=False)
    for case_id in d.fixed:
        console.print(f"[green]now passing[/] {case_id}", highlight=False)
    for case_id, x, y in d.tools_changed:
        console.print(f"[yellow]tools changed[/] {case_id}: {x} → {y}", highlight=False)
    for case_id in d.only_a:
        console.print(f"only in A: {case_id}")
    for case_id in d.only_b:
        console.print(f"only in B: {case_id}")


# --- slack: the Slack app (integrations/slack.py) -------------------------------------------
@app.command()
@friendly_errors
def slack(
    workspace: Optional[Path] = WorkspaceOpt,
    mode: Optional[str] = typer.Option(None, "--mode", help="socket | http (default: socket when SLACK_APP_TOKEN is set, else http)."),
    host: str = typer.Option("127.0.0.1", "--host", help="HTTP mode: address to listen on (0.0.0.0 for all interfaces)."),
    port: int = typer.Option(3000, "--port", min=0, max=65535, help="HTTP mode: port to listen on."),
    path: str = typer.Option("/slack/events", "--path", help="HTTP mode: the Request URL path set in the app manifest."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="local | openai (default: $SHOPSIGHT_BACKEND, else local)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name for the openai backend (default $SHOPSIGHT_MODEL)."),
    allow_channel: list[str] = typer.Option([], "--allow-channel", help="Answer only in this channel id ('dm' for direct messages). Repeatable; beats $SHOPSIGHT_SLACK_ALLOWED_CHANNELS."),
    allow_user: list[str] = typer.Option([], "--allow-user", help="Answer only this user id. Repeatable; beats $SHOPSIGHT_SLACK_ALLOWED_USERS."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=32, help="Questions answered at once (default: $SHOPSIGHT_SLACK_WORKERS, else 4)."),
    check: bool = typer.Option(False, "--check", help="Check the configuration and the bot token with Slack, show it, and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --check: print the result as JSON."),
) -> None:
    """Run ShopSight as a Slack app: answers @mentions and direct messages, one conversation per thread.

    Socket Mode needs SLACK_BOT_TOKEN and SLACK_APP_TOKEN; the HTTP Events API needs SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET. Install guide: docs/slack.md.

    Examples:

      shopsight slack --check             (check the tokens and show the bot)

      shopsight slack --allow-channel C0123ABCD --allow-channel dm

      shopsight slack --mode http --host 0.0.0.0 --port 3000
    """
    from shopsight.integrations.slack import EventsServer, SlackSettings, check_connection, create_app, run_socket_mode

    if mode not in (None, "socket", "http"):
        raise ValueError(f"--mode must be socket or http, not {mode!r}")
    settings = SlackSettings.from_env(
        allowed_channels=allow_channel or None, allowed_users=allow_user or None, workers=workers
    )
    chosen = mode or settings.mode()
    info = check_connection(settings, chosen)  # fail fast, before loading a model
    if check:
        if as_json:
            print(json.dumps(info, indent=2))
            return
        table = Table(title="Slack app configuration", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            table.add_row(key.replace("_", " "), shown or "[yellow]anyone[/]")
        console.print(table)
        return
    if not settings.allowed_channels and not settings.allowed_users:
        err_console.print(
            "[yellow]Anyone in the workspace can ask: set SHOPSIGHT_SLACK_ALLOWED_CHANNELS / _USERS "
            "(or --allow-channel / --allow-user) to limit who sees customer data.[/]"
        )
    # The agent's ask(question, conversation_id=...) is the Answerer the Slack app expects.
    agent = _build_agent(workspace, backend, model)
    app_ = create_app(settings, agent, mode=chosen, workspace=_workspace(workspace))  # risk alerts' buttons label into it
    bot = f"@{info['bot_user']} in {info['team']}"
    if chosen == "socket":
        console.print(f"{bot}: connected over Socket Mode. Ctrl-C to stop.")
        run_socket_mode(app_, settings)
        return
    server = EventsServer(app_, host=host, port=port, path=path)
    console.print(f"{bot}: listening on {server.url} (Slack needs it behind HTTPS). Ctrl-C to stop.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("Stopped.")


@app.command()
@friendly_errors
def mcp(
    workspace: Optional[Path] = WorkspaceOpt,
    http: Optional[int] = typer.Option(None, "--http", min=0, max=65535, metavar="PORT",
                                       help="Serve streamable HTTP on this port (at /mcp) instead of stdio."),
    host: str = typer.Option("127.0.0.1", "--host", help="With --http: the address to listen on. Any other than "
                             "loopback needs $SHOPSIGHT_MCP_TOKEN."),
) -> None:
    """Serve the workspace's tools to MCP clients (Claude Code, Claude Desktop, IDEs): every tool read-only, plus check_answer, model cards and prompts.

    Claude Code, one line:

      claude mcp add shopsight -- shopsight mcp --workspace PATH

    Claude Desktop (claude_desktop_config.json):

      {"mcpServers": {"shopsight": {"command": "shopsight", "args": ["mcp", "--workspace", "PATH"]}}}

    Over HTTP (clients send 'Authorization: Bearer $SHOPSIGHT_MCP_TOKEN'; a missing or wrong token gets 401):

      SHOPSIGHT_MCP_TOKEN=... shopsight mcp --http 8765 --workspace PATH

    How an agent should use the tools: SKILL.md.
    """
    from shopsight.integrations.mcp_server import TOKEN_ENV, check_http_access, open_handlers, serve_http, serve_stdio
    from shopsight.tools import ToolContext

    settings = _settings(home=workspace)
    token = settings.mcp_token
    if http is not None:
        check_http_access(host, token)  # before loading anything
    ws = _workspace(settings.home)
    handlers = open_handlers(ToolContext(ws, chroma_url=settings.chroma_url, raise_errors=settings.raise_errors))
    if http is None:  # stdout is the protocol's: every word for people goes to stderr
        err_console.print(f"ShopSight MCP server on {ws.root} over stdio.", highlight=False)
        serve_stdio(handlers)
        return
    auth = "bearer token required" if token else f"[yellow]no token: set {TOKEN_ENV} to require one[/]"
    err_console.print(f"ShopSight MCP server on {escape(str(ws.root))}: http://{host}:{http}/mcp ({auth}). Ctrl-C to stop.",
                      highlight=False)
    try:
        serve_http(handlers, host=host, port=http, token=token)
    except KeyboardInterrupt:
        err_console.print("Stopped.")


# --- index: retrieval over user histories --------------------------------------------------
index_app = typer.Typer(
    help=(
        "The session index: one readable, PII-masked document per session, embedded offline.\n\n"
        "  shopsight index build                  embed new or changed sessions (resumable)\n\n"
        "  shopsight index query --user u00042     a user's latest sessions (no vector search)\n\n"
        "  shopsight index query \"abandoned cart headphones\" --purchased --category Audio\n\n"
        "Set SHOPSIGHT_CHROMA_URL (or --chroma-url) to use a Chroma server instead of the workspace store."
    ),
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

ChromaUrlOpt = typer.Option(
    None, "--chroma-url", help="Chroma server, e.g. http://127.0.0.1:8000 (default: $SHOPSIGHT_CHROMA_URL, else the workspace store).", show_default=False
)


def _session_index(workspace: Optional[Path], chroma_url: Optional[str], batch_size: Optional[int] = None, threads: Optional[int] = None):
    from shopsight.index.store import BUILD_BATCH, SessionIndex

    return SessionIndex(
        _workspace(workspace), chroma_url=chroma_url or _settings().chroma_url, batch_size=batch_size or BUILD_BATCH, embed_threads=threads
    )


def _build_index(index, show_progress: bool, rebuild: bool = False):
    """Build (or rebuild from scratch) with a Rich progress bar, or silently; returns BuildStats."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    build = index.rebuild if rebuild else index.build
    if not show_progress:
        return build()
    with Progress(
        TextColumn("[bold]Embedding sessions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("embed", total=None)
        return build(progress=lambda done, total: bar.update(task, completed=done, total=total))


def _print_build(stats) -> None:
    d = stats.to_dict()
    console.print(
        f"Index {d['target']}: {d['sessions']:,} sessions; embedded {d['embedded']:,}, unchanged {d['unchanged']:,}, "
        f"removed {d['removed']:,} in {d['seconds']:.1f}s"
        + (f" ({d['sessions_per_second']:.0f} sessions/s)" if d["embedded"] else "")
    )


@index_app.command("build")
@friendly_errors
def index_build(
    workspace: Optional[Path] = WorkspaceOpt,
    chroma_url: Optional[str] = ChromaUrlOpt,
    batch_size: Optional[int] = typer.Option(None, min=1, help="Sessions embedded and stored per batch, the unit an interrupted build resumes from (default: 1024).", show_default=False),
    threads: Optional[int] = typer.Option(None, min=1, help="Cores for embedding, one batch of texts each (default: every usable core)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Delete the index and embed every session again, e.g. when it is corrupted; the old index stays until the new one is complete."),
    engine: str = typer.Option("local", help="local | spark (embed in Spark executors into the Chroma server; needs --chroma-url or $SHOPSIGHT_CHROMA_URL, and Java 17+)."),
    events: Optional[str] = typer.Option(None, "--events", help="--engine spark: a Parquet file, folder or glob to index (default: the workspace's events)."),
    master: Optional[str] = typer.Option(None, "--master", help="--engine spark: Spark master URL (default $SPARK_MASTER, else local[2])."),
    as_json: bool = typer.Option(False, "--json", help="Print the build counts as JSON."),
) -> None:
    """Embed new or changed sessions into the index; skip unchanged ones, drop removed ones.

    Safe to interrupt and re-run: finished batches are kept, and only what remains is embedded.
    Holds the workspace's writer lock, so no ingest changes the events while it reads them.

    Examples:

      shopsight index build --workspace /tmp/shop

      shopsight index build --rebuild --workspace /tmp/shop      (replace a corrupted index)

      SHOPSIGHT_CHROMA_URL=http://127.0.0.1:8000 shopsight index build --engine spark --events 'shards/*.parquet'
    """
    if engine not in ("local", "spark"):
        raise ValueError(f"unknown engine '{engine}': choose local or spark")
    if engine == "spark":
        if rebuild:
            raise ValueError("--rebuild is for --engine local; on a server, delete the collection and build again")
        from shopsight.index.spark import build_index_spark

        ws = _workspace(workspace)
        say = (lambda step: None) if as_json else (lambda step: err_console.print(f"[dim]spark: {step}…[/]"))
        with _writer(ws, "index build"):
            stats = build_index_spark(ws, chroma_url or _settings().chroma_url, events=events, master=master,
                                      batch_size=batch_size or 1024, report=say)
        if as_json:
            print(json.dumps(stats.to_dict(), indent=2))
            return
        _print_build(stats)
        return
    if events or master:
        raise ValueError("--events and --master are for --engine spark")
    index = _session_index(workspace, chroma_url, batch_size, threads)
    with _writer(index.workspace, "index build"):
        stats = _build_index(index, show_progress=not as_json, rebuild=rebuild)
    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
        return
    _print_build(stats)


@index_app.command("query")
@friendly_errors
def index_query(
    text: Optional[str] = typer.Argument(None, help="What to look for, in words. Omit with --user for the user's history."),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Only this user's sessions (alone: newest first, no vector search)."),
    since: Optional[str] = typer.Option(None, help="Sessions starting at or after this time, e.g. 2026-03-01."),
    until: Optional[str] = typer.Option(None, help="Sessions starting before this time."),
    purchased: Optional[bool] = typer.Option(None, "--purchased/--no-purchase", help="Only sessions with / without a purchase.", show_default=False),
    category: Optional[str] = typer.Option(None, help="Only sessions touching this category (exact name)."),
    country: Optional[str] = typer.Option(None, help="Only sessions from this country code."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many sessions to return."),
    workspace: Optional[Path] = WorkspaceOpt,
    chroma_url: Optional[str] = ChromaUrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON."),
) -> None:
    """Search sessions by meaning with filters, or list one user's sessions.

    Examples:

      shopsight index query --user u00042 --since 2026-02-01

      shopsight index query "looked at headphones but did not buy" --no-purchase --country US -k 5
    """
    index = _session_index(workspace, chroma_url)
    index.require_built()
    if text:
        hits = index.search(text, k=k, since=since, until=until, purchased=purchased, category=category, country=country, user_id=user)
        title = f"Sessions like {text!r}"
    elif user:
        if purchased is not None or category or country:
            raise ValueError("--purchased, --category and --country need a query TEXT; a user's history takes only --since/--until")
        hits = index.user_history(user, since=since, until=until, limit=k)
        title = f"Sessions of {user}, newest first"
    else:
        raise ValueError("give a query TEXT, or --user USER for a user's history (see `shopsight index query --help`)")
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, default=str))
        return
    if not hits:
        console.print("No sessions match.")
        return
    table = Table(title=title)
    for col in ("score", "session", "user", "start", "document"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row("-" if h.score is None else f"{h.score:.3f}", h.session_id, h.user_id, h.start[:16].replace("T", " "), escape(h.document))
    console.print(table)


@index_app.command("stats")
@friendly_errors
def index_stats(
    workspace: Optional[Path] = WorkspaceOpt,
    chroma_url: Optional[str] = ChromaUrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show what the index holds: sessions, users, time span, disk size and the last build.

    Example: shopsight index stats --workspace /tmp/shop
    """
    stats = _session_index(workspace, chroma_url).stats()
    if as_json:
        print(json.dumps(stats, indent=2, default=str))
        return
    table = Table(title="Session index", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    last = stats.pop("last_build", None)
    for key, value in stats.items():
        if key == "disk_bytes":
            value = f"{value / 1e6:,.1f} MB"
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    if last:
        table.add_row("last build", f"{last['finished'][:19]}: embedded {last['embedded']:,} of {last['sessions']:,} in {last['seconds']:.1f}s")
    console.print(table)


# --- models: train, models, predict -------------------------------------------------------

# Targets of `shopsight train`; "all" trains every model in behavior.models.MODEL_NAMES. Add a
# target (e.g. "router") here and a branch in `train`.
TRAIN_TARGETS: list[str] = ["all", "intent", "churn", "risk", "recommend"]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _print_metric_rows(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    for col in ("model / baseline", "task", "ROC-AUC", "PR-AUC", "Brier", "ECE", "F1", "recall", "base rate", "n", "train s"):
        table.add_column(col, justify="left" if col in ("model / baseline", "task") else "right")
    for r in rows:
        table.add_row(
            r["who"], r["task"], _fmt(r["roc_auc"]), _fmt(r["pr_auc"]), _fmt(r["brier"]), _fmt(r["ece"]),
            _fmt(r["f1"]), _fmt(r["recall"]), _fmt(r["base_rate"]), _fmt(r["n"]), _fmt(r.get("train_seconds"), 1),
        )
    console.print(table)


def _print_ranking_rows(title: str, rows: list[dict]) -> None:
    """The recommender's table: HR@10, NDCG@10 and coverage of the model beside its baselines."""
    table = Table(title=title)
    for col in ("model / baseline", "HR@10", "NDCG@10", "coverage", "n", "train s"):
        table.add_column(col, justify="left" if col == "model / baseline" else "right")
    for r in rows:
        table.add_row(r["who"], _fmt(r["hr_at_10"]), _fmt(r["ndcg_at_10"]), _fmt(r["coverage"]), _fmt(r["n"]), _fmt(r.get("train_seconds"), 1))
    console.print(table)


def train_targets(target: str) -> list[str]:
    """The model names a `shopsight train TARGET` trains; raises ValueError naming the valid targets."""
    from shopsight.behavior.models import available_models

    if target not in TRAIN_TARGETS:
        raise ValueError(f"unknown train target '{target}': choose one of {', '.join(TRAIN_TARGETS)}")
    return available_models(ranking=True) if target == "all" else [target]


def _train_with_progress(
    ws, names: list[str], *, settings, show: bool, horizon: Optional[int] = None, keep_going: bool = False,
    events=None, card_extra: Optional[dict] = None,
) -> list[dict]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import ModelError

    events = ws.load_events() if events is None else events
    results = []
    with Progress(
        TextColumn("[bold]{task.fields[model]}[/] {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=err_console, transient=False, disable=not show,
    ) as bar:
        for name in names:
            task = bar.add_task("starting", total=1.0, model=name)

            def progress(stage: str, frac: float, _task=task) -> None:
                bar.update(_task, description=stage, completed=min(max(frac, 0.0), 1.0))

            params = {"horizon_days": horizon} if (horizon and name == "churn") else {}
            try:
                results.append(train_model(ws, name, progress=progress, settings=settings, events=events, card_extra=card_extra, **params))
            except ModelError as exc:
                if not keep_going:
                    raise
                # the demo goes on with the other models; the error says what data was missing
                results.append({"name": name, "version": None, "train_seconds": None, "card": {}, "error": str(exc)})
                bar.update(task, description="[red]not trained[/]", completed=1.0)
                continue
            bar.update(task, description="saved " + results[-1]["version"], completed=1.0)
    return results


@app.command()
@friendly_errors
def train(
    target: str = typer.Argument("all", help=f"What to train: {' | '.join(TRAIN_TARGETS)} | router (the local agent's question router)."),
    workspace: Optional[Path] = WorkspaceOpt,
    horizon: Optional[int] = typer.Option(None, min=1, help="Churn horizon H in days (default 30)."),
    seed: int = typer.Option(0, help="Random seed (the same seed and data give the same model)."),
    threads: int = typer.Option(1, min=1, help="Torch CPU threads (1 is fastest on a busy 2-core machine)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Maximum training epochs (early stopping may end sooner)."),
    if_stale: bool = typer.Option(False, "--if-stale", help="Train only the models never trained or with events newer than their latest version's data cutoff."),
    engine: str = typer.Option("local", help="local | spark: draw --sample users on Spark; churn's, intent's and risk's training tables are built there and streamed from Parquet shards."),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="--engine spark: how many users to train on (a deterministic draw by --seed)."),
    events: Optional[str] = typer.Option(None, "--events", help="--engine spark: a Parquet file, folder or glob to draw from (default: the workspace's events)."),
    master: Optional[str] = typer.Option(None, "--master", help="--engine spark: Spark master URL (default $SPARK_MASTER, else local[2])."),
    as_json: bool = typer.Option(False, "--json", help="Print the model cards as JSON."),
) -> None:
    """Train models on a time-based split, compare them with baselines, and save a new version of each.

    Trains on every visible ingest batch. Holds the workspace's writer lock: an ingest started
    meanwhile waits for it ($SHOPSIGHT_LOCK_TIMEOUT_S).

    Examples:

      shopsight train churn --horizon 30 --workspace /tmp/shop

      shopsight train --if-stale        (after new batches: retrain what they made stale)

      shopsight train churn --engine spark --sample 200000 --events 'shards/*.parquet'
      (the users are drawn on Spark and written as Parquet shards in WORKSPACE/training/; each
      model's training table (its rows' features and labels, the same time-based split, built by the
      model's own per-user code) is built on Spark into WORKSPACE/training/<model>-table-sample-N-seedS/
      and the model trains here from those shards a batch at a time. Intent has two tables (users,
      sessions); risk's folds are drawn on Spark, and its autoencoder and baselines fit in memory on
      the accounts' tabular features (one row per account); recommend trains on the sample's events
      in memory. Table-trained models write no scores: run `shopsight score` after)
    """
    from shopsight.behavior.models import metric_rows, ranking_rows
    from shopsight.behavior.models.common import TrainSettings

    if target == "router":  # the local backend's question router (issue 5): no events needed
        _train_router(workspace, as_json)
        return
    names = train_targets(target)
    ws = _workspace(workspace)
    if if_stale:
        from shopsight.behavior.models.registry import stale_models

        stale = stale_models(ws, names)
        for name in names:
            if not as_json:
                console.print(f"{name}: " + (f"training ({stale[name]})" if name in stale else "fresh, not retrained"))
        names = [n for n in names if n in stale]
        if not names:
            if as_json:
                print("[]")
            return
    settings = TrainSettings(seed=seed, threads=threads, **({"epochs": epochs} if epochs else {}))
    if engine not in ("local", "spark"):
        raise ValueError(f"unknown engine '{engine}': choose local or spark")
    if engine == "local" and (sample or events or master):
        raise ValueError("--sample, --events and --master are for --engine spark")
    if engine == "spark" and not sample:
        raise ValueError("--engine spark trains on a sample of users: give --sample N")
    train_events, card_extra = None, None
    from_table: list[dict] = []
    # "all" trains every model the data allows: one that cannot be trained (Complete Journey has no
    # sessions without a purchase for session intent) is reported, and the others are still trained
    with _writer(ws, "train"):
        if engine == "spark":
            from shopsight.behavior.scoring import ScoringError
            from shopsight.behavior.spark import build_training_table, read_sample, sample_users

            folder = sample_users(ws, sample, events, seed=seed, master=master)
            card_extra = {"training_sample": {"users": int(sample), "seed": seed, "engine": "spark", "shards": str(folder),
                                              "source": events or f"workspace {ws.root}"}}
            from shopsight.behavior.models import model_class, train_from_table, training_labels
            from shopsight.behavior.models.common import ModelError

            for name in [n for n in names if n in ("churn", "intent", "risk")]:  # each model's table is built on Spark, streamed from its shards
                params = {"horizon_days": horizon} if (horizon and name == "churn") else {}
                cls = model_class(name)
                if not as_json:
                    err_console.print(f"[dim]spark: building the {name} training table…[/]")
                try:
                    table = build_training_table(ws, cls(**params, settings=settings), folder, master=master,
                                                 name=f"{name}-table-{folder.parent.name}", labels=training_labels(ws, cls)[0])
                    from_table.append(train_from_table(ws, name, table, settings=settings, card_extra=card_extra, **params))
                except (ModelError, ScoringError) as exc:
                    if target != "all":
                        raise
                    from_table.append({"name": name, "version": None, "train_seconds": None, "card": {}, "error": str(exc)})
            names = [n for n in names if n not in ("churn", "intent", "risk")]
            if names:
                train_events = read_sample(folder)
                card_extra["training_sample"]["events"] = int(len(train_events))
        results = from_table + (_train_with_progress(ws, names, settings=settings, show=not as_json, horizon=horizon,
                                                     keep_going=target == "all", events=train_events, card_extra=card_extra) if names else [])
    failed = [r for r in results if r.get("error")]
    if as_json:
        print(json.dumps(results, indent=2, default=str))
    else:
        for r in results:
            if r.get("error"):
                err_console.print(f"[bold red]{r['name']} not trained:[/] {escape(r['error'])}", highlight=False)
                continue
            card = {**r["card"], "name": r["name"], "version": r["version"]}
            if ranking_rows(card):
                _print_ranking_rows(f"{r['name']} {r['version']}: model vs baselines on the test cutoff (trained in {_fmt(r['train_seconds'], 1)} s)", ranking_rows(card))
                continue
            _print_metric_rows(f"{r['name']} {r['version']}: model vs baselines on the test cutoff (trained in {_fmt(r['train_seconds'], 1)} s)", metric_rows(card))
    if failed:
        raise typer.Exit(code=1)


@app.command()
@friendly_errors
def score(
    workspace: Optional[Path] = WorkspaceOpt,
    engine: str = typer.Option("local", help="local (one process) | spark (PySpark; needs Java 17+)."),
    events: Optional[str] = typer.Option(None, "--events", help="Parquet file, folder of shards or glob to score (default: the workspace's events)."),
    memory: str = typer.Option("auto", "--memory", help="--engine local: table (hold the event table once) | stream (DuckDB partitions "
                               "the events by user on disk; one group in memory) | auto (stream past 512 MB of Parquet)."),
    master: Optional[str] = typer.Option(None, "--master", help="Spark master URL (default $SPARK_MASTER, else local[2]); --engine spark only."),
    users_per_group: int = typer.Option(5000, min=1, help="Users scored per call (a Spark group, a local chunk): bounds the working memory."),
    threads: int = typer.Option(1, min=1, help="Torch CPU threads per process (per Spark Python worker)."),
    as_json: bool = typer.Option(False, "--json", help="Print the published run's manifest as JSON."),
) -> None:
    """Score every user with the latest intent, churn and risk models; publish per-user score tables.

    Writes, per model, a score table (the columns of the training-time scores.parquet) and a
    feature table (the model's inputs) as Parquet part files under
    WORKSPACE/scores/run-<id>/<model>@<version>/, then points scores/current.json at the run.
    top_users, the query tool and the agent read the published table of each model's latest
    version. A failed run publishes nothing: the previous scores stay current.

    The two engines run the same per-user code and give the same scores (to 1e-6).

    Examples:

      shopsight score                                  (the workspace's events, one process)

      shopsight score --events 'shards/*.parquet' --memory stream   (a shop bigger than the memory)

      shopsight score --engine spark --events 'shards/*.parquet'

      SPARK_MASTER=spark://head:7077 shopsight score --engine spark
    """
    ws = _workspace(workspace)
    if engine not in ("local", "spark"):
        raise ValueError(f"unknown engine '{engine}': choose local or spark")
    if master and engine != "spark":
        raise ValueError("--master is for --engine spark")
    if memory != "auto" and engine != "local":
        raise ValueError("--memory is for --engine local (Spark holds groups in its executors)")
    with _writer(ws, "score"):
        if engine == "spark":
            from shopsight.behavior.spark import score_spark

            say = (lambda step: None) if as_json else (lambda step: err_console.print(f"[dim]spark: {step}…[/]"))
            manifest = score_spark(ws, events, master=master, users_per_group=users_per_group, threads=threads, report=say)
        else:
            import torch

            from shopsight.behavior.scoring import score_local

            torch.set_num_threads(threads)
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("Scoring users"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err_console, transient=True, disable=as_json) as bar:
                task = bar.add_task("users", total=None)
                manifest = score_local(ws, events, chunk_users=users_per_group, memory=memory,
                                       progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        print(json.dumps(manifest, indent=2, default=str))
        return
    console.print(f"Scored {manifest['users']:,} users as of {manifest['asof'][:10]} with {', '.join(manifest['tables'].values())} "
                  f"({manifest['engine']}); published {ws.root / 'scores' / manifest['run']}.")


@app.command()
@friendly_errors
def models(
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List saved model versions with their test metrics, their best baseline's, and how old their data is.

    "data to" is the last event a version was trained on; "newer events" counts the events
    ingested since with a later time, and "days since" the days from that cutoff to the
    workspace's last event (retrain with `shopsight train` when they grow). "drift" is the
    population stability index of the per-user feature that moved most since training
    (below 0.1 stable, up to 0.25 a moderate shift, above that retrain); --json lists every one.

    Example: shopsight models --workspace /tmp/shop
    """
    from shopsight.behavior.models import metric_rows, ranking_rows
    from shopsight.behavior.models.registry import add_freshness, list_models

    ws = _workspace(workspace)
    rows = add_freshness(ws, list_models(ws))
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print(f"No models in {ws.root}: train them with `shopsight train --workspace {ws.root}`.")
        return
    table = Table(title=f"Models in {ws.root}")
    for col in ("model", "version", "created", "task", "ROC-AUC", "PR-AUC", "Brier", "best baseline (ROC-AUC)", "train s",
                "data to", "newer events", "days since", "drift (worst PSI)"):
        table.add_column(col)
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], r["version"], "-", "[red]" + r["error"] + "[/]", "", "", "", "", "", "", "", "", "")
            continue
        fresh = r.get("freshness") or {}
        age = (str(fresh.get("data_cutoff", "-"))[:10], f"{fresh['newer_events']:,}" if fresh else "-",
               f"{fresh['days_since_cutoff']:g}" if fresh else "-", _worst_drift(r.get("drift")))
        card = {"name": r["name"], "version": r["version"], "metrics": r["metrics"], "baselines": r["baselines"]}
        if ranked := ranking_rows(card):  # the recommender: HR@10 in the task column, its best baseline beside it
            best = max(ranked[1:], key=lambda x: x["hr_at_10"] or 0, default=None)
            table.add_row(r["name"], r["version"], str(r.get("created") or "-"),
                          f"next item HR@10 {_fmt(ranked[0]['hr_at_10'])}, NDCG@10 {_fmt(ranked[0]['ndcg_at_10'])}", "-", "-", "-",
                          f"{best['who']} HR@10 {_fmt(best['hr_at_10'])}" if best else "-", _fmt(r.get("train_seconds"), 1), *age)
            continue
        flat = metric_rows(card)
        own = [x for x in flat if x["who"] == f"{r['name']}@{r['version']}"] or [{"task": "-", "roc_auc": None, "pr_auc": None, "brier": None}]
        for m in own:
            base = [x for x in flat if x["who"] != f"{r['name']}@{r['version']}" and x["task"] == m["task"] and x["roc_auc"] is not None]
            best = max(base, key=lambda x: x["roc_auc"], default=None)
            table.add_row(
                r["name"], r["version"], str(r.get("created") or "-"), m["task"], _fmt(m["roc_auc"]), _fmt(m["pr_auc"]),
                _fmt(m["brier"]), f"{best['who']} {_fmt(best['roc_auc'])}" if best else "-", _fmt(r.get("train_seconds"), 1),
                *age,
            )
    console.print(table)


def _worst_drift(drift: Optional[dict]) -> str:
    """The feature that moved most since training, e.g. "recency_days 0.31 drift: retrain"."""
    if not drift:
        return "-"
    name, d = max(drift.items(), key=lambda kv: kv[1]["psi"])
    return f"{name} {d['psi']:.2f} {d['verdict']}"


def predict_user(ws, user_id: str) -> dict[str, Any]:
    """Every trained model's explanation for one user; models not trained are listed in ``missing``."""
    from shopsight.behavior.models import MODEL_NAMES, load_model
    from shopsight.behavior.models.common import ModelError
    from shopsight.behavior.models.registry import latest_version

    trained = [n for n in MODEL_NAMES if latest_version(ws, n)]
    if not trained:
        raise ValueError(f"no trained models in {ws.root}: run `shopsight train --workspace {ws.root}` first")
    events = ws.load_events()
    if not (events["user_id"] == user_id).any():
        raise KeyError(f"unknown user id '{user_id}' in workspace {ws.root}")
    out: dict[str, Any] = {"user_id": user_id, "models": {}, "missing": [n for n in MODEL_NAMES if n not in trained]}
    for name in trained:
        try:
            out["models"][name] = load_model(ws, name).explain(events, user_id)
        except ModelError as exc:
            out["models"][name] = {"error": str(exc)}
    return out


@app.command()
@friendly_errors
def predict(
    user_id: str = typer.Argument(..., help="The user to score, e.g. u00042."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the scores and explanations as JSON."),
) -> None:
    """Score one user with every trained model (intent, churn, risk) and show why.

    Example: shopsight predict u00042 --json
    """
    ws = _workspace(workspace)
    result = predict_user(ws, user_id)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    table = Table(title=f"User {user_id}")
    for col in ("model", "probability", "top factors", "rules fired", "evidence (sessions)"):
        table.add_column(col, overflow="fold")
    for name, e in result["models"].items():
        if "error" in e:
            table.add_row(name, "-", f"[red]{e['error']}[/]", "", "")
            continue
        factors = "\n".join(
            f"{f['name']} = {_fmt(f.get('value'), 2)} ({f['direction']} {abs(f['contribution']):.3f})" for f in e.get("factors", [])[:4]
        )
        rules = ", ".join(r["name"] for r in e.get("rules", []) if r.get("fired")) or "none"
        evidence = ", ".join(dict.fromkeys(ev["session_id"] for ev in e.get("evidence", [])[:4]))
        table.add_row(e.get("model", name), _fmt(e.get("probability")), factors, rules, evidence)
    console.print(table)
    for name in result["missing"]:
        console.print(f"[yellow]{name}: not trained — run `shopsight train {name} --workspace {ws.root}`.[/]")


# --- real-time risk control: thresholds, watch, decisions (issue 20) -------------------------------
risk_app = typer.Typer(
    help="The risk model's decisions: the review / block thresholds in force, and setting them.\n\n"
    "  shopsight risk thresholds\n\n"
    "  shopsight risk thresholds --review 0.3 --block 0.9",
    no_args_is_help=True,
)
app.add_typer(risk_app, name="risk")


@risk_app.command("thresholds")
@friendly_errors
def risk_thresholds(
    review: Optional[float] = typer.Option(None, "--review", help="Hold orders whose fraud probability is at least this for review."),
    block: Optional[float] = typer.Option(None, "--block", help="Block orders whose fraud probability is at least this."),
    version: Optional[str] = typer.Option(None, "--version", help="The risk model version (default: the latest)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the thresholds record as JSON."),
) -> None:
    """Show or set the risk model's review and block thresholds, with the precision and recall each gives on validation data.

    Training chooses them on the validation accounts (review: the F1-best threshold; block: the lowest with validation precision of at least 95%). Setting them writes a thresholds record in the model's version folder that names the version; `score_risk` and `shopsight watch` decide with it. Hard rules (a card-testing burst blocks) apply whatever the thresholds.

    Examples:

      shopsight risk thresholds

      shopsight risk thresholds --review 0.3 --block 0.9
    """
    from shopsight.behavior.models.decision import load_policy, risk_card, set_thresholds

    ws = _workspace(workspace)
    card = risk_card(ws, version)
    if review is not None or block is not None:
        current = load_policy(ws, card)
        if current is None and (review is None or block is None):
            raise ValueError("this model has no thresholds yet: give both --review and --block")
        with _writer(ws, "risk thresholds"):
            set_thresholds(ws, card, review=review if review is not None else current.review,
                           block=block if block is not None else current.block)
    policy = load_policy(ws, card)
    if policy is None:
        raise ValueError(f"risk@{card.get('version')} has no decision thresholds (trained before them): retrain it with "
                         f"`shopsight train risk --workspace {ws.root}`")
    if as_json:
        print(json.dumps(policy.to_dict(), indent=2))
        return
    table = Table(title=f"Decision thresholds of {policy.model}")
    for col in ("decision", "when P(fraud) ≥", "validation precision", "validation recall"):
        table.add_column(col)
    for name, t, p, r in (("block", policy.block, policy.block_precision, policy.block_recall),
                          ("review", policy.review, policy.review_precision, policy.review_recall)):
        table.add_row(name, f"{t:.3f}", _fmt(p), _fmt(r))
    console.print(table)
    console.print(f"Source: {policy.source}.")
    console.print("Hard rules: " + ", ".join(f"{k} forces {v}" for k, v in policy.hard_rules.items()) + ".")


@app.command()
@friendly_errors
def watch(
    path: Path = typer.Argument(..., help="A folder new event files land in (CSV followed as it grows, Parquet read once), or one CSV file being appended to."),
    workspace: Optional[Path] = WorkspaceOpt,
    once: bool = typer.Option(False, "--once", help="Process what is there now and exit (for cron and tests)."),
    poll: float = typer.Option(0.1, "--poll", min=0.01, help="Seconds between looks at PATH: an order waits up to this long before its poll starts (a look that finds nothing lists PATH and stats its files)."),
    users: bool = typer.Option(True, "--users/--orders-only", help="Also decide users with new events but no new order."),
    alerts: bool = typer.Option(True, "--alerts/--no-alerts", help="Post review and block decisions to $SHOPSIGHT_SLACK_ALERT_CHANNEL (when set, with SLACK_BOT_TOKEN)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only decisions at review or above."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads for scoring (default: $SHOPSIGHT_THREADS, else 2)."),
    store_every: float = typer.Option(5.0, "--store-every", min=0.0, help="Seconds between stores of the landed events into the workspace (one batch per file each time, in a child process; decisions do not wait for it)."),
) -> None:
    """Follow PATH, append new events to the workspace as they land, and decide every new order (allow / review / block).

    Each poll validates the new lines (malformed ones go to workspace/rejected/ with their cause; the stream goes on), scores each new order from its buyer's history as of the order (the risk model and its thresholds, `shopsight risk thresholds`), and writes the decision at once to a journal in workspace/watch/ (fsynced). Every few seconds (--store-every) a child process appends the landed events through the same ingest as `shopsight ingest`, folds the journal into workspace/decisions/ (the audit trail the agent reads, which also reads the journal), and remembers the position. Killed and restarted, it decides every order exactly once and stores every event once. A CSV's first line is its header (the canonical columns: user_id, ts, event, …).

    Examples:

      shopsight watch incoming/ --workspace /tmp/shop

      shopsight watch events.csv --once --workspace /tmp/shop
    """
    from shopsight.behavior.watch import PollReport, StreamWatcher

    import torch

    ws = _workspace(workspace)
    settings = _settings()
    torch.set_num_threads(threads or settings.threads)
    on_decisions = None
    if alerts:
        from shopsight.integrations.risk_alerts import alerts_from_settings

        on_decisions = alerts_from_settings(settings, ws)
    watcher = StreamWatcher(ws, path, on_decisions=on_decisions, lock_timeout=settings.lock_timeout_s, score_users=users,
                            flush_every=store_every)

    tally, printed = PollReport(), time.monotonic()

    def summarise() -> None:  # one line for the polls since the last: at --poll 0.1 a line a poll would scroll away the alerts
        nonlocal tally, printed
        c = tally.counts()
        console.print(f"batches {', '.join(map(str, tally.batches)) or '-'}: {tally.events_added:,} events added, "
                      f"{tally.already_stored:,} already stored, {tally.rejected_lines + tally.rejected_rows:,} rejected; "
                      f"decisions: {c['allow']} allow, {c['review']} review, {c['block']} block"
                      + (f" (recovered batches {', '.join(map(str, tally.recovered_batches))})" if tally.recovered_batches else ""))
        tally, printed = PollReport(), time.monotonic()

    def show(report) -> None:
        for d in report.decisions:  # at once, whatever the summary's pace
            if d["decision"] != "allow":
                subject = f"order {d['order_id']} (user {d['user_id']}, " if d["order_id"] else f"user {d['user_id']} ("
                colour = "red" if d["decision"] == "block" else "yellow"
                console.print(f"  [{colour}]{d['decision']}[/] {subject}P(fraud) {d['score']:.3f}): "
                              f"{escape(str((d['reasons'] or [''])[0]))}", highlight=False)
        if quiet:
            return
        tally.merge(report)
        if not tally.empty() and (once or report.batches or report.recovered_batches or time.monotonic() - printed >= 1.0):
            summarise()

    def stopping(pending_users: int) -> None:
        users_part = f"deciding the {pending_users:,} users still pending, " if pending_users else ""
        err_console.print(f"Stopping: {users_part}storing what landed and folding the decisions… "
                          "(Ctrl-C again leaves at once; the next run recovers what this one did not finish)")

    try:
        watcher.run(once=once, poll_seconds=poll, on_poll=show, on_stopping=stopping)
    except KeyboardInterrupt:
        console.print("Stopped; the next `shopsight watch` resumes from the checkpoint.")
    finally:
        if not quiet and not tally.empty():
            summarise()


# --- the agent: ask, chat, train router (issue 5) -------------------------------------------------
BackendOpt = typer.Option(None, "--backend", "-b", help="local (embedded GGUF, default) or openai (OPENAI_BASE_URL / OPENAI_API_KEY).")
ModelOpt = typer.Option(None, "--model", help="Model name for the openai backend (default $SHOPSIGHT_MODEL).")


def _build_agent(workspace: Optional[Path], backend: Optional[str], model: Optional[str], threads: Optional[int] = None):
    from shopsight.agent.loop import build_agent

    settings = _settings(backend=backend, model=model, threads=threads, home=workspace)
    ws = _workspace(settings.home)
    with err_console.status(f"Loading the agent ({settings.backend} backend)…"):
        return build_agent(settings, ws)


def _print_tool_calls(answer) -> None:
    table = Table(title="Tool calls", show_lines=False)
    for col in ("tool", "args", "result"):
        table.add_column(col, overflow="fold")
    for c in answer.tool_calls:
        table.add_row(c.name, escape(json.dumps(dict(c.args))), escape(json.dumps(c.result, default=str)[:300]))
    console.print(table)


def _print_query_tables(answer) -> None:
    """Each grouped metric-query result of an answer as a table (the rows the answer lists)."""
    from shopsight.tools.query_metric import metric_title, result_table

    for call in answer.tool_calls:
        table = result_table(call.result) if call.name == "query_metric" else None
        if table is None:
            continue
        head, rows = table
        out = Table(title=metric_title(call.result))
        for i, name in enumerate(head):
            out.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            out.add_row(*(escape(cell) for cell in row))
        console.print(out)


def _write_chart(answer, path: Path) -> None:
    """Write the chart of the answer's first chartable tool result to ``path`` (PNG), or say there is none."""
    from shopsight.integrations.slack_charts import charts_for_tool_calls

    charts = charts_for_tool_calls(answer.tool_calls, limit=1)
    if not charts:
        console.print("[yellow]This answer has no chart (one number, or no grouped result).[/]")
        return
    path.write_bytes(charts[0].png)
    console.print(f"Chart written to {escape(str(path))} ({escape(charts[0].title)}).", highlight=False)


@app.command()
@friendly_errors
def ask(
    question: str = typer.Argument(..., help="The question, in quotes."),
    workspace: Optional[Path] = WorkspaceOpt,
    backend: Optional[str] = BackendOpt,
    model: Optional[str] = ModelOpt,
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this conversation id (follow-ups)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the tool calls."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answer, tool_calls, citations, backend, model, prompt_version, latency_s."),
    chart: Optional[Path] = typer.Option(None, "--chart", help="Also write the answer's chart to this PNG file (groups, trends, funnels, cohorts).",
                                         dir_okay=False, writable=True),
) -> None:
    """Ask one question and print the grounded answer (grouped results also as a table).

    Examples:

      shopsight ask "why is u00042 likely to churn?"

      shopsight ask "which category has the highest cart abandonment?" --chart abandonment.png

      shopsight ask "top 10 users by fraud risk" --json

      OPENAI_BASE_URL=http://127.0.0.1:8000/v1 shopsight ask "is o000123 fraudulent?" --backend openai
    """
    agent = _build_agent(workspace, backend, model)
    if resume and not agent.store.exists(resume):
        raise KeyError(f"no conversation '{resume}' in {agent.store.path}")
    answer = agent.ask(question, conversation_id=resume)
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, default=str))
        if chart:
            _write_chart(answer, chart)
        return
    if verbose:
        _print_tool_calls(answer)
    console.print(answer.answer, highlight=False, markup=False)
    _print_query_tables(answer)
    if chart:
        _write_chart(answer, chart)
    console.print(f"[dim]{answer.backend} · {answer.model} · prompts {answer.prompt_version} · {answer.latency_s:.1f}s · "
                  f"conversation {answer.conversation_id}[/]", highlight=False)


CHAT_HELP = """Commands: /help  /reset (new conversation)  /verbose (toggle tool calls)  /json (toggle JSON output)
  /chart PATH (write the last answer's chart as a PNG)  /quit
Follow-ups ("why?", "and her risk?", "what about the second one?") refer to earlier answers."""


@app.command()
@friendly_errors
def chat(
    workspace: Optional[Path] = WorkspaceOpt,
    backend: Optional[str] = BackendOpt,
    model: Optional[str] = ModelOpt,
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a stored conversation by id."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tool calls from the start."),
) -> None:
    """Chat with the analyst: answers stream as they are written; conversations are kept in the workspace.

    Examples:

      shopsight chat

      shopsight chat --resume 3f2a9c1b7d4e --verbose
    """
    agent = _build_agent(workspace, backend, model)
    cid = resume
    if cid and not agent.store.exists(cid):
        raise KeyError(f"no conversation '{cid}' in {agent.store.path}")
    show_json = False
    last = None  # the last answer, for /chart
    console.print(f"[bold]ShopSight[/] on {agent.backend} ({agent.model}). {CHAT_HELP}")
    while True:
        try:
            question = console.input("[bold cyan]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if not question:
            continue
        if question in ("/quit", "/exit"):
            break
        if question == "/help":
            console.print(CHAT_HELP)
            continue
        if question == "/reset":
            cid = None
            console.print("[dim]New conversation.[/]")
            continue
        if question == "/verbose":
            verbose = not verbose
            console.print(f"[dim]Tool calls {'shown' if verbose else 'hidden'}.[/]")
            continue
        if question == "/json":
            show_json = not show_json
            console.print(f"[dim]JSON output {'on' if show_json else 'off'}.[/]")
            continue
        if question.split(maxsplit=1)[0] == "/chart":
            target = question.split(maxsplit=1)[1:]
            if not target:
                console.print("Usage: /chart PATH   (e.g. /chart abandonment.png)")
            elif last is None:
                console.print("[yellow]No chart yet: ask a question first.[/]")
            else:
                try:
                    _write_chart(last, Path(target[0]).expanduser())
                except OSError as exc:  # a bad path ends one command, not the conversation
                    err_console.print(f"[bold red]Error:[/] cannot write {escape(target[0])}: {escape(exc.strerror or str(exc))}")
            continue
        if show_json:
            answer = last = agent.ask(question, conversation_id=cid)
            cid = answer.conversation_id
            print(json.dumps(answer.to_dict(), indent=2, default=str))
            continue
        answer = last = _streamed_answer(agent, question, cid)
        cid = answer.conversation_id
        _print_query_tables(answer)
        if verbose:
            _print_tool_calls(answer)
        console.print(f"[dim]{answer.latency_s:.1f}s · conversation {cid}[/]")


def _streamed_answer(agent, question: str, cid: Optional[str]):
    """Ask with the draft streaming into a live region that the final answer replaces in place.

    Only what stands stays on screen: when the guard rewrites or replaces the draft, the
    streamed text is overwritten by the final answer, never printed beside it.
    """
    from rich.live import Live
    from rich.text import Text

    streamed: list[str] = []
    prefix = Text.from_markup("[bold green]shopsight>[/] ")
    with Live(prefix.copy(), console=console, refresh_per_second=12, transient=False) as live:
        def stream(piece: str) -> None:
            streamed.append(piece)
            live.update(prefix + Text("".join(streamed)))

        answer = agent.ask(question, conversation_id=cid, on_token=stream)
        live.update(prefix + Text(answer.answer))
    return answer


def _demo_ask(ws) -> None:
    from shopsight.agent.router import load_router
    from shopsight.agent.samples import sample_questions
    from shopsight.behavior.workspace import WorkspaceError

    try:
        load_router(ws)
    except WorkspaceError:
        _train_router(ws.root, as_json=False)
    agent = _build_agent(ws.root, "local", None)
    for question in sample_questions(ws):
        console.print(f"\n[bold cyan]Q:[/] {question}", highlight=False)
        answer = agent.ask(question)
        console.print(f"[bold green]A:[/] {escape(answer.answer)}", highlight=False)
        console.print(f"[dim]{answer.latency_s:.1f}s · tools: {', '.join(c.name for c in answer.tool_calls) or '-'}[/]", highlight=False)
    console.print('\nAsk your own: shopsight ask "top 10 users by churn"   or   shopsight chat')


def _train_router(workspace: Optional[Path], as_json: bool) -> None:
    from shopsight.agent.router import default_embedder, train_router

    ws = _workspace(workspace)
    with err_console.status("Training the question router (MiniLM embeddings + a small torch head)…"):
        card = train_router(ws, default_embedder())
    if as_json:
        print(json.dumps(card, indent=2))
        return
    table = Table(title=f"Router {card['model']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key in ("n_train", "n_test", "heldout_accuracy", "unseen_template_accuracy", "train_seconds"):
        table.add_row(key.replace("_", " "), str(card[key]))
    table.add_row("weakest labels", ", ".join(f"{k} {v:.2f}" for k, v in sorted(card["per_label_accuracy"].items(), key=lambda kv: kv[1])[:3]))
    console.print(table)


refuse_top_level_import(__name__)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
