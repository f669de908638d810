"""Agent benchmark on the embedded default: per question end-to-end latency, time to first token, router latency.

Builds (or reuses) a demo workspace with trained models and router, loads the local agent
once (the load is reported apart), then asks each question ``--rounds`` times in a fresh
conversation and reports p50/p95 of:

- end to end: question in → guarded, cited answer out (tools, LLM, guard, rewrite, storage);
- first token: question in → first streamed token of the answer;
- router: classification + entity extraction.

    python bench/agent.py                          # a 300-user demo workspace in a temp folder
    python bench/agent.py --workspace ./workspace  # an existing workspace (trains the router if missing)

Targets (2 cores): p50 end to end <= 3 s, first token <= 1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script (`python bench/agent.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, peak_rss_mb, print_table, write_result  # noqa: E402

QUESTIONS = [
    "why is {buyer} likely to churn?",
    "what is {buyer} about to buy?",
    "is {buyer} a fraud risk?",
    "top 10 users most likely to churn",
    "which users look like fraud this week?",
    "tell me about {buyer}",
    "what did {buyer} do last week?",
    "conversion rate for mobile users since March",
    "compare {buyer} and {buyer2}",
    "what's the weather in Paris?",
]


def _prepare(workspace: Path | None, users: int, console: Any) -> Any:
    from shopsight.agent.router import default_embedder, load_router, train_router
    from shopsight.behavior.models import MODEL_NAMES, train_model
    from shopsight.behavior.workspace import Workspace, WorkspaceError

    if workspace is None:
        from shopsight.behavior.demo import build_demo_workspace

        ws = Workspace(Path(tempfile.mkdtemp(prefix="bench-agent-")) / "ws")
        console.print(f"Building a {users}-user demo workspace in {ws.root} …")
        build_demo_workspace(ws, users=users, days=120, seed=7, progress=False)
        for name in MODEL_NAMES:
            train_model(ws, name, events=ws.load_events())
    else:
        ws = Workspace(workspace)
    try:
        load_router(ws)
    except WorkspaceError:
        console.print("Training the router …")
        train_router(ws, default_embedder())
    return ws


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=None, help="An existing workspace (default: build a demo one).")
    parser.add_argument("--users", type=int, default=300, help="Demo users when building a workspace.")
    parser.add_argument("--rounds", type=int, default=3, help="Times each question is asked.")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (SHOPSIGHT_THREADS).")
    args = parser.parse_args(argv)
    console = bench_console()

    from shopsight.agent import Settings, build_agent

    ws = _prepare(args.workspace, args.users, console)
    t0 = time.perf_counter()
    agent = build_agent(Settings.from_env(backend="local", threads=args.threads), ws)
    load_s = time.perf_counter() - t0
    events = ws.load_events(columns=["user_id", "event"])
    buyers = sorted(events.loc[events["event"] == "purchase", "user_id"].astype(str).unique())
    fill = {"buyer": buyers[0], "buyer2": buyers[1]}

    rows, e2e, ttft, router = [], [], [], []
    for template in QUESTIONS:
        question = template.format(**fill)
        lat, first, rout, replaced = [], [], [], 0
        for _ in range(args.rounds):
            a = agent.ask(question, on_token=lambda piece: None)  # streamed, so the first token is timed
            lat.append(a.latency_s)
            if a.timings.first_token_s is not None:
                first.append(a.timings.first_token_s)
            rout.append(a.timings.plan_s)  # the router's planning step
            replaced += a.guard.replaced
        e2e += lat
        ttft += first
        router += rout
        rows.append({
            "question": question[:48], "tools": ",".join(c.name for c in a.tool_calls) or "-",
            "p50_s": _pct(lat, 50), "p95_s": _pct(lat, 95), "first_token_p50_s": _pct(first, 50),
            "router_p50_ms": round(1000 * _pct(rout, 50), 1) if rout else None, "guard_replaced": f"{replaced}/{args.rounds}",
        })
    overall = {
        "questions": len(QUESTIONS), "rounds": args.rounds, "agent_load_s": round(load_s, 2),
        "e2e_p50_s": _pct(e2e, 50), "e2e_p95_s": _pct(e2e, 95),
        "first_token_p50_s": _pct(ttft, 50), "first_token_p95_s": _pct(ttft, 95),
        "router_p50_ms": round(1000 * _pct(router, 50), 1) if router else None,
        "router_p95_ms": round(1000 * _pct(router, 95), 1) if router else None,
        "peak_rss_mb": round(peak_rss_mb(), 1), "threads": args.threads,
        "targets": {"e2e_p50_s": 3.0, "first_token_s": 1.0},
    }
    print_table("Agent on the embedded default (per question)", rows, console=console)
    print_table("Overall", [overall], columns=[k for k in overall if k != "targets"], console=console)
    path = write_result("agent", {"overall": overall, "per_question": rows, "workspace": str(ws.root)})
    console.print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
