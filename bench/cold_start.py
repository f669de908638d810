"""Cold start (issue 14): the MiniLM runtime before and after, and a cold one-shot `shopsight ask`.

Three measurements, each comparing two versions in the same run (the shared machine varies
up to 2x, so quote the ratios, not the absolute times):

1. Embedding throughput, in this process: the embedder module of the *before* version (its
   ``index/embedder.py``: sentence-transformers) against the *after* one, on the same session
   documents, chunk by chunk in alternating order so both see the same load; the ratio is
   the median of the chunks' ratios. Also the lowest cosine between their vectors.
2. Import + first embed, cold: a fresh ``python`` per run that imports the module, loads the
   embedder and embeds one query; wall time seen from outside (interpreter start included),
   the phases seen from inside, peak RSS; p50 of the runs, before and after interleaved.
3. With ``--before PATH --after PATH --workspace W``: a cold one-shot ``python cli.py ask`` in
   each checkout (two worktrees), interleaved, p50 of ``--runs``, peak RSS; then the
   ``python -X importtime`` summary of the after checkout (import seconds per package), so
   the remaining import cost is visible package by package.

    python bench/cold_start.py                                  # embedder: git 7a6a25e vs this checkout
    python bench/cold_start.py --docs 500 --runs 3              # a quicker look
    python bench/cold_start.py --before ../main --after . --workspace /tmp/embed-demo --runs 5

Without ``--before`` the old embedder is read from git (``--before-rev``, default 7a6a25e, the
last commit on sentence-transformers); without ``--after`` the new one is this checkout's.
Results: a table per part and ``bench/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

# Run as a script (`python bench/cold_start.py`): make the repository importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchmarkError, bench_console, print_table, write_result  # noqa: E402

BEFORE_REV = "7a6a25e"  # the last commit whose embedder ran sentence-transformers
QUESTION = "top 10 users by fraud risk"
QUERY = "abandoned cart with a coffee machine"
# Texts per timed chunk: small, so the many before/after pairs average out a neighbour's load
# (256-text chunks gave 8 pairs and ratios from 0.54 to 1.12 on a loaded machine).
CHUNK = 64
HEAVY = ("torch", "sentence_transformers", "transformers", "chromadb", "tokenizers", "onnxruntime")
# Printed by each cold probe as its last line: phases from inside the fresh interpreter.
PROBE = """\
import json, sys, time
t0 = time.perf_counter()
import {module} as embedder_module
t1 = time.perf_counter()
embedder = embedder_module.get_embedder()
t2 = time.perf_counter()
embedder.embed([{query!r}])
t3 = time.perf_counter()
hwm = next((int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")), None)
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "first_embed_s": t3 - t2, "peak_rss_mb": hwm,
                  "heavy": sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))}}))
"""


# --- where the two versions come from ------------------------------------------------------
def embedder_source(checkout: Path | None, rev: str | None) -> str:
    """The text of ``index/embedder.py`` in ``checkout``, or at git ``rev`` of this repository."""
    if checkout is not None:
        path = checkout / "index" / "embedder.py"
        if not path.exists():
            raise BenchmarkError(f"no index/embedder.py under {checkout}: pass a checkout of this repository")
        return path.read_text(encoding="utf-8")
    proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:index/embedder.py"], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"cannot read index/embedder.py at {rev}: {proc.stderr.strip()} (pass --before PATH instead)")
    return proc.stdout


def stage_modules(sources: dict[str, str], folder: Path) -> None:
    """Write each embedder source as ``<name>.py`` in ``folder`` (both depend only on installed packages)."""
    for name, text in sources.items():
        (folder / f"{name}.py").write_text(text, encoding="utf-8")


def load_module(name: str, folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    if spec is None or spec.loader is None:
        raise BenchmarkError(f"cannot load {folder / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def session_texts(workspace: Path | None, n: int, seed: int) -> list[str]:
    """``n`` session texts as index builds embed them: from ``workspace`` if given, else a synthetic shop."""
    from shopsight.index.documents import session_documents

    if workspace is not None:
        from shopsight.behavior.workspace import Workspace

        ws = Workspace(workspace)
        docs = session_documents(ws.load_events(), ws.load_catalogue())
    else:
        from shopsight.behavior.synthetic import generate_shop

        shop = generate_shop(users=max(50, n // 8), seed=seed)
        docs = session_documents(shop.events, shop.catalogue)
    return docs.sample(min(n, len(docs)), random_state=seed)["embed_text"].tolist()


# --- 1. throughput in one process ----------------------------------------------------------
def throughput(modules: dict[str, ModuleType], texts: list[str], precisions: Sequence[str], threads: int) -> list[dict[str, Any]]:
    """Sessions/s of each version per precision, chunk pairs in alternating order; ratio after/before."""
    rows = []
    for precision in precisions:
        embedders = {name: m.MiniLMEmbedder(precision=precision) for name, m in modules.items()}
        for e in embedders.values():
            e.embed(texts[:32], threads=threads)  # first-call allocations and lazy kernels
        seconds: dict[str, list[float]] = {name: [] for name in embedders}
        vectors: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
        names = list(embedders)
        for i, a in enumerate(range(0, len(texts), CHUNK)):
            chunk = texts[a : a + CHUNK]
            for name in names if i % 2 == 0 else names[::-1]:
                t = time.perf_counter()
                vectors[name].append(embedders[name].embed(chunk, threads=threads))
                seconds[name].append((time.perf_counter() - t) / len(chunk))
        before, after = (np.concatenate(vectors[n]) for n in ("before", "after"))
        ratios = np.asarray(seconds["before"]) / np.asarray(seconds["after"])
        rows.append({
            "precision": precision,
            "texts": len(texts),
            "threads": threads,
            "before_sessions_per_s": round(1 / float(np.median(seconds["before"])), 1),
            "after_sessions_per_s": round(1 / float(np.median(seconds["after"])), 1),
            "ratio_after_over_before": round(float(np.median(ratios)), 3),
            "chunk_ratios": [round(float(r), 3) for r in ratios],
            "min_cosine": round(float((before * after).sum(axis=1).min()), 7),
        })
        del embedders
    return rows


# --- 2. import + first embed, cold ---------------------------------------------------------
def cold_embed(folder: Path, names: Sequence[str], runs: int) -> dict[str, dict[str, Any]]:
    """p50 over ``runs`` fresh interpreters per version (interleaved) of wall and inside phases."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(runs + 1):  # run 0 warms the page cache and is not counted
        for name in names if r % 2 == 0 else list(names)[::-1]:
            code = PROBE.format(module=name, query=QUERY, heavy=HEAVY)
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, check=False, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise BenchmarkError(f"cold probe of {name} failed:\n{proc.stderr[-3000:]}")
            if r:
                samples[name].append({"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return {name: _p50(rows) for name, rows in samples.items()}


def _p50(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(rows)}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key + ("_p50" if key.endswith("_s") else "")] = round(statistics.median(float(r[key]) for r in rows), 3)
        else:
            out[key] = value
    out["wall_s_all"] = [round(r["wall_s"], 3) for r in rows]
    return out


# --- 3. a cold one-shot ask in two checkouts -------------------------------------------------
def _timed_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float | None, subprocess.CompletedProcess[str]]:
    """Wall seconds and peak RSS (MB) of one child; /usr/bin/time measures RSS where it exists."""
    time_bin = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        full = [time_bin, "-f", "%M", "-o", rss_file.name, *cmd] if time_bin else cmd
        t = time.perf_counter()
        proc = subprocess.run(full, cwd=cwd, env=env, check=False, capture_output=True, text=True)
        wall = time.perf_counter() - t
        rss = None
        if time_bin:
            numbers = re.findall(r"^\d+$", Path(rss_file.name).read_text(), flags=re.MULTILINE)
            rss = int(numbers[-1]) / 1024 if numbers else None
    return wall, rss, proc


def checkout_env(checkout: Path) -> dict[str, str]:
    """The environment for running ``checkout``'s cli.py: its folders shadow any installed copy."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}


def cold_ask(checkouts: dict[str, Path], workspace: Path, question: str, runs: int) -> dict[str, dict[str, Any]]:
    """p50 wall and peak RSS of ``python cli.py ask QUESTION --workspace W`` per checkout, interleaved.

    One untimed ask per checkout comes first: it trains the router if the workspace has none
    and warms the page cache, so the timed runs measure a cold process, not a cold disk.
    """
    samples: dict[str, list[tuple[float, float | None]]] = {n: [] for n in checkouts}
    names = list(checkouts)
    for r in range(runs + 1):
        for name in names if r % 2 == 0 else names[::-1]:
            cmd = [sys.executable, "cli.py", "ask", question, "--workspace", str(workspace)]
            wall, rss, proc = _timed_run(cmd, checkouts[name], checkout_env(checkouts[name]))
            if proc.returncode != 0:
                raise BenchmarkError(f"`{' '.join(cmd)}` in {checkouts[name]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            if r:
                samples[name].append((wall, rss))
    out = {}
    for name, rows in samples.items():
        rss_values = [r for _, r in rows if r is not None]
        out[name] = {
            "checkout": str(checkouts[name]),
            "runs": len(rows),
            "wall_s_p50": round(statistics.median(w for w, _ in rows), 3),
            "wall_s_all": [round(w, 3) for w, _ in rows],
            "peak_rss_mb_p50": round(statistics.median(rss_values), 1) if rss_values else None,
        }
    return out


def import_profile(cmd: list[str], cwd: Path, env: dict[str, str], top: int) -> list[dict[str, Any]]:
    """The ``top`` packages ``cmd`` spends most import time in (``python -X importtime``)."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=cwd, env=env, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"`{' '.join(cmd)}` under -X importtime failed:\n{proc.stderr[-3000:]}")
    return summarise_importtime(proc.stderr, top)


def summarise_importtime(stderr: str, top: int) -> list[dict[str, Any]]:
    """Import seconds per top-level package, biggest first: the self time of all its modules.

    A line of ``-X importtime`` reads ``import time: self [us] | cumulative | name``. Summing
    self times by package charges each package for its own modules wherever they were
    imported from (torch's cost stays torch's even when safetensors.torch pulled it in).
    """
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+\d+\s+\|\s*(\S+)", line)
        if m:
            package = m.group(2).split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(m.group(1)) / 1e6
    grand = sum(totals.values())
    rows = [{"name": k, "self_s": round(v, 3), "share": round(v / grand, 3) if grand else 0.0}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
    rows.append({"name": "(all imports)", "self_s": round(grand, 3), "share": 1.0})
    return rows


# --- the run -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, default=None, help="Checkout (worktree) of the old version.")
    parser.add_argument("--after", type=Path, default=None, help="Checkout of the new version (default: this one).")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="Without --before: the git revision of the old embedder.")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="A demo workspace: its sessions are embedded, and with --before/--after it is asked.")
    parser.add_argument("--question", default=QUESTION, help="The one-shot question for the ask timing.")
    parser.add_argument("--docs", type=int, default=2000, help="Session documents for the throughput comparison.")
    parser.add_argument("--runs", type=int, default=3, help="Cold processes per version (p50 reported).")
    parser.add_argument("--threads", type=int, default=None, help="Embedding workers (default: every usable core, as builds use).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=12, help="Modules shown in the import-time summary.")
    parser.add_argument("--skip-throughput", action="store_true", help="Only the cold timings.")
    parser.add_argument("--name", default="cold_start", help="Result file name under bench/results/.")
    args = parser.parse_args(argv)

    from shopsight.index.embedder import native_bf16, usable_cores

    console = bench_console()
    after_root = (args.after or ROOT).resolve()
    sources = {"before": embedder_source(args.before, args.before_rev), "after": embedder_source(after_root, None)}
    payload: dict[str, Any] = {
        "before": str(args.before) if args.before else f"git {args.before_rev}",
        "after": str(after_root),
        "note": "compare ratios within this run; the shared machine varies up to 2x between runs",
    }
    staging = Path(tempfile.mkdtemp(prefix="bench-cold-start-"))
    try:
        stage_modules({f"embedder_{k}": v for k, v in sources.items()}, staging)

        console.print(f"Import + first embed, {args.runs} cold processes each …")
        cold = cold_embed(staging, ["embedder_before", "embedder_after"], args.runs)
        payload["cold_embed"] = cold
        payload["cold_embed_ratio_before_over_after"] = round(cold["embedder_before"]["wall_s_p50"] / cold["embedder_after"]["wall_s_p50"], 2)
        rows = [{"what": name.removeprefix("embedder_"), **{k: v for k, v in c.items() if k not in ("wall_s_all", "heavy")},
                 "heavy imports": ",".join(c["heavy"])} for name, c in cold.items()]
        print_table("Cold import + first embed (p50, seconds)", rows, console=console)
        console.print(f"before/after wall: {payload['cold_embed_ratio_before_over_after']}x")
        embed_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        embed_env.pop("PYTHONPATH", None)
        payload["embed_import_profile_after"] = import_profile(
            [sys.executable, "-c", PROBE.format(module="embedder_after", query=QUERY, heavy=HEAVY)], staging, embed_env, args.top)
        print_table("Import time of the after embedder, by package", payload["embed_import_profile_after"], console=console)

        if not args.skip_throughput:
            texts = session_texts(args.workspace, args.docs, args.seed)
            threads = args.threads or usable_cores()
            precisions = ["fp32", "bf16"] if native_bf16() else ["fp32"]
            console.print(f"Throughput on {len(texts):,} session texts, {threads} worker(s), {', '.join(precisions)} …")
            modules = {"before": load_module("embedder_before", staging), "after": load_module("embedder_after", staging)}
            payload["throughput"] = throughput(modules, texts, precisions, threads)
            print_table("Embedding throughput, same process (sessions/s)",
                        [{**{k: v for k, v in r.items() if k != "chunk_ratios"}, "min_cosine": f"{r['min_cosine']:.7f}"}
                         for r in payload["throughput"]], console=console)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if args.before and args.after and args.workspace:
        checkouts = {"before": args.before.resolve(), "after": after_root}
        console.print(f"Cold `cli.py ask {args.question!r}`, {args.runs} runs each, interleaved …")
        payload["question"] = args.question
        payload["cold_ask"] = cold_ask(checkouts, args.workspace.resolve(), args.question, args.runs)
        payload["cold_ask_ratio_before_over_after"] = round(
            payload["cold_ask"]["before"]["wall_s_p50"] / payload["cold_ask"]["after"]["wall_s_p50"], 2)
        print_table("Cold one-shot ask (p50)", [{"what": k, **{kk: vv for kk, vv in v.items() if kk != "wall_s_all"}}
                                                for k, v in payload["cold_ask"].items()], console=console)
        console.print(f"before/after wall: {payload['cold_ask_ratio_before_over_after']}x")
        cmd = [sys.executable, "cli.py", "ask", args.question, "--workspace", str(args.workspace.resolve())]
        payload["ask_import_profile_after"] = import_profile(cmd, after_root, checkout_env(after_root), args.top)
        print_table("Import time of the after ask, by package", payload["ask_import_profile_after"], console=console)

    path = write_result(args.name, payload)
    console.print(f"Results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
