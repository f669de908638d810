"""Eval reports: a JSON file for machines, a Markdown file for people, and the diff of two runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from shopsight.behavior.workspace import write_bytes_atomic, write_json_atomic
from shopsight.evals.runner import EvalRun

#: The totals shown in reports and diffs, in order, with their labels.
TOTALS: tuple[tuple[str, str], ...] = (
    ("pass_rate", "cases passed"),
    ("tool_accuracy", "tool-selection accuracy"),
    ("argument_accuracy", "argument accuracy"),
    ("faithfulness", "faithfulness (every number from a tool)"),
    ("fact_recall", "required-fact recall"),
    ("refusal_accuracy", "refusal accuracy"),
    ("key_fact_share", "key facts present (each tool's)"),
    ("first_sentence_rate", "first sentence answers"),
    ("honest_limit_rate", "honest limits (questions beyond the tools)"),
    ("raw_field_name_answers", "answers with raw field names"),
    ("repeated_sentence_answers", "answers with a sentence said twice"),
    ("personal_data_leaks", "answers with personal data"),
    ("prompt_leaks", "answers revealing the system prompt"),
    ("errors", "errors"),
    ("latency_p50_s", "latency p50 (s)"),
    ("latency_p95_s", "latency p95 (s)"),
    ("tokens_total", "tokens"),
)
SHARES = {"pass_rate", "tool_accuracy", "argument_accuracy", "faithfulness", "fact_recall", "refusal_accuracy",
          "key_fact_share", "first_sentence_rate", "honest_limit_rate"}


class ReportError(ValueError):
    """A report file cannot be read as an eval report."""


def format_total(name: str, value: Any) -> str:
    """A total as people read it: shares as percents, seconds with 2 decimals, '-' when not measured."""
    if value is None:
        return "-"
    if name in SHARES:
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown report of one run (``report`` is :meth:`EvalRun.to_dict`)."""
    totals = report["totals"]
    meta = report.get("meta", {})
    lines = [f"# Eval report: {report['set']}", ""]
    lines.append(f"Run {report['run_id']} started {report['started']}" + "".join(f", {k} {v}" for k, v in meta.items()) + ".")
    lines += ["", f"**{totals['passed']} of {totals['cases']} cases passed** ({totals['turns']} questions).", ""]
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {label} | {format_total(key, totals.get(key))} |" for key, label in TOTALS]
    by_tag = totals.get("by_tag") or {}
    if by_tag:
        lines += ["", "| tag | cases | passed |", "|---|---|---|"]
        lines += [f"| {tag} | {v['cases']} | {v['passed']} |" for tag, v in by_tag.items()]
    guard = totals.get("guard_by_tool") or {}
    if guard:
        lines += ["", "Drafts the grounding guard accepted, had rewritten once, or replaced by the rendered facts:", "",
                  "| tool | accepted | rewritten | replaced |", "|---|---|---|---|"]
        lines += [f"| {tool} | {v.get('accepted', 0)} | {v.get('rewritten', 0)} | {v.get('replaced', 0)} |" for tool, v in guard.items()]
    failed = [c for c in report["cases"] if not c["passed"]]
    if failed:
        lines += ["", "## Failures", ""]
        for c in failed:
            lines.append(f"### {c['id']}" + (f" ({', '.join(c['tags'])})" if c["tags"] else ""))
            if c["given"]:
                lines.append("Given: " + ", ".join(f"{k} = {v}" for k, v in c["given"].items()))
            lines += [f"- {_cell(r, 400)}" for r in c["reasons"]]
            for t in c["turns"]:
                tools = ", ".join(f"{x['name']}({json.dumps(x['args'], sort_keys=True)})" for x in t["tools"]) or "none"
                lines += ["", f"> **Q:** {_cell(t['question'], 400)}", ">", f"> **A:** {_cell(t['answer'], 600)}", ">", f"> tools: {_cell(tools, 400)}"]
            lines.append("")
    lines += ["", "## All cases", "", "| case | tags | result | tools called | latency (s) |", "|---|---|---|---|---|"]
    for c in report["cases"]:
        tools = "; ".join(", ".join(x["name"] for x in t["tools"]) or "-" for t in c["turns"])
        latency = sum(t["latency_s"] for t in c["turns"])
        lines.append(
            f"| {c['id']} | {', '.join(c['tags'])} | {'pass' if c['passed'] else 'FAIL'} | {_cell(tools, 80)} | {latency:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(run: EvalRun, folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``folder`` (atomically); return both paths."""
    folder = Path(folder)
    data = run.to_dict()
    json_path, md_path = folder / "report.json", folder / "report.md"
    write_json_atomic(json_path, data)
    write_bytes_atomic(md_path, render_markdown(data).encode("utf-8"))
    return json_path, md_path


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a ``report.json`` (or the folder holding one).

    Raises:
        ReportError: The file is missing or is not an eval report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.exists():
        raise ReportError(f"no eval report at {path}; write one with `shopsight eval run SET.yaml --report DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"totals", "cases"} <= set(data):
        raise ReportError(f"{path} is not an eval report (no totals/cases)")
    return data


@dataclass
class ReportDiff:
    """What changed from run A to run B."""

    a: str
    b: str
    totals: list[tuple[str, Any, Any]] = field(default_factory=list)  # (name, a, b) for every total
    fixed: list[str] = field(default_factory=list)  # failed in A, pass in B
    broken: list[tuple[str, list[str]]] = field(default_factory=list)  # passed in A, fail in B (+ reasons)
    tools_changed: list[tuple[str, str, str]] = field(default_factory=list)  # (case, tools in A, tools in B)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "totals": [{"name": n, "a": x, "b": y} for n, x, y in self.totals],
            "fixed": self.fixed,
            "broken": [{"id": i, "reasons": r} for i, r in self.broken],
            "tools_changed": [{"id": i, "a": x, "b": y} for i, x, y in self.tools_changed],
            "only_in_a": self.only_a,
            "only_in_b": self.only_b,
        }


def _tools_line(case: Mapping[str, Any]) -> str:
    return " / ".join(", ".join(x["name"] for x in t["tools"]) or "-" for t in case["turns"])


def diff_reports(a: Mapping[str, Any], b: Mapping[str, Any]) -> ReportDiff:
    """Compare two reports case by case (matched by id) and total by total."""
    d = ReportDiff(a=str(a.get("run_id", "A")), b=str(b.get("run_id", "B")))
    d.totals = [(key, a["totals"].get(key), b["totals"].get(key)) for key, _ in TOTALS]
    cases_a = {c["id"]: c for c in a["cases"]}
    cases_b = {c["id"]: c for c in b["cases"]}
    d.only_a = [i for i in cases_a if i not in cases_b]
    d.only_b = [i for i in cases_b if i not in cases_a]
    for case_id, ca in cases_a.items():
        cb = cases_b.get(case_id)
        if cb is None:
            continue
        if not ca["passed"] and cb["passed"]:
            d.fixed.append(case_id)
        elif ca["passed"] and not cb["passed"]:
            d.broken.append((case_id, list(cb["reasons"])))
        if _tools_line(ca) != _tools_line(cb):
            d.tools_changed.append((case_id, _tools_line(ca), _tools_line(cb)))
    return d


def render_diff_markdown(d: ReportDiff) -> str:
    """The diff as Markdown: totals side by side, then cases fixed, broken and with other tools."""
    lines = [f"# Eval diff: {d.a} → {d.b}", "", "| measure | A | B |", "|---|---|---|"]
    labels = dict(TOTALS)
    lines += [f"| {labels[n]} | {format_total(n, x)} | {format_total(n, y)} |" for n, x, y in d.totals]
    if d.broken:
        lines += ["", "## Now failing", ""] + [f"- {i}: {_cell('; '.join(r), 300)}" for i, r in d.broken]
    if d.fixed:
        lines += ["", "## Now passing", ""] + [f"- {i}" for i in d.fixed]
    if d.tools_changed:
        lines += ["", "## Different tools called", ""] + [f"- {i}: {x} → {y}" for i, x, y in d.tools_changed]
    if d.only_a or d.only_b:
        lines += ["", "## Cases in one run only", ""]
        lines += [f"- only in A: {i}" for i in d.only_a] + [f"- only in B: {i}" for i in d.only_b]
    return "\n".join(lines) + "\n"
