"""Mechanism benchmark: how often an explanation's first reason names what the synthetic shop really did.

Runs ``evals.mechanisms.measure`` on a trained demo workspace (``--workspace``; its models are
only read), or builds and trains a demo shop of ``--users`` in a temporary folder first. Prints
the per-type table (test window) and the orderings compared, and writes
``bench/results/mechanisms.json``.

    python bench/mechanisms.py --workspace ~/ws-demo        # a trained 5,000-user demo
    python bench/mechanisms.py --users 2000                 # build and train one here first

Target: the first reason names the mechanism for >= 80% of the test-window frauds and churners.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script (`python bench/mechanisms.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, print_table, write_result  # noqa: E402

TARGET = 0.80


def trained_workspace(args: argparse.Namespace, tmp: Path) -> Any:
    """The workspace to measure: ``--workspace`` as it is, or a demo shop of ``--users`` built and trained in ``tmp``."""
    from shopsight.behavior.workspace import Workspace

    if args.workspace:
        return Workspace(Path(args.workspace).expanduser())
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model

    ws = Workspace(tmp / "ws")
    build_demo_workspace(ws, users=args.users, days=args.days, seed=args.seed, progress=False)
    events = ws.load_events()
    for name in ("churn", "risk"):
        t = time.perf_counter()
        train_model(ws, name, events=events)
        bench_console().print(f"trained {name} in {time.perf_counter() - t:.0f} s")
    return ws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=None, help="A trained demo workspace (read only).")
    parser.add_argument("--users", type=int, default=2000, help="Users of the demo shop built when no --workspace is given.")
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--churn-limit", type=int, default=None, help="Explain at most this many churners.")
    parser.add_argument("--name", default="mechanisms", help="Result file name under bench/results/.")
    args = parser.parse_args(argv)

    import torch

    from shopsight.evals.mechanisms import measure

    torch.set_num_threads(1)
    console = bench_console()
    with tempfile.TemporaryDirectory(prefix="mechanisms-") as tmp:
        ws = trained_workspace(args, Path(tmp))
        t = time.perf_counter()
        def progress(stage: str, done: int, total: int) -> None:
            if done == total or done % 200 == 0:
                console.print(f"{stage}: {done}/{total} explained")

        result = measure(ws, churn_limit=args.churn_limit, progress=progress)
        seconds = time.perf_counter() - t
    result["seconds"] = round(seconds, 1)
    result["target"] = TARGET
    result["meets_target"] = bool(result["test"]["overall"]["rate"] is not None and result["test"]["overall"]["rate"] >= TARGET)

    order = ", ".join(f"{m} by {how}" for m, how in result["ordering"].items())
    print_table(f"First reason names the mechanism ({result['models']['risk']}, {result['models']['churn']}; {order})",
                result["by_type"], ["type", "split", "n", "first_reason_names_it", "rate", "named_in_top_3", "flagged"])
    print_table("Test window, pooled", [{"what": k, **v} for k, v in result["test"].items()],
                ["what", "n", "first_reason_names_it", "rate", "mean_of_type_rates"])
    print_table("Orderings compared (test window)", [
        {"what": how, **{k: v["rate"] for k, v in r["test"].items()}} for how, r in result["orderings"].items()
    ], ["what", "fraud", "churn", "overall"])
    path = write_result(args.name, result)
    console.print(f"overall {result['test']['overall']['rate']} (target {TARGET:.0%}) in {seconds:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
