"""PII masking benchmark: time of ``mask_pii`` against input size, for shop text and adversarial text.

Masking runs on every review, search and device name at ingest and on every index build,
in pure Python while holding the GIL, so its cost must grow linearly with the text: the
old masker took 1.8 s on 40 KB and hung `index build` on one 30 MB review. For each input
kind this times 10 KB ... 4 MB, fits the slope of log(time) against log(size) (1 is
linear, 2 quadratic), and reports seconds per MB.

Times are CPU seconds of this process (the best of ``--repeat`` runs), so a busy
neighbour on the shared machine inflates them less than wall time would; ``calibration_s``
is the CPU time of a fixed pure-Python loop, to compare runs made under different loads.

    python bench/privacy.py                       # 10 KB, 100 KB, 1 MB, 4 MB
    python bench/privacy.py --sizes 10000,100000  # a quick check
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Callable

# Run as a script (`python bench/privacy.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, print_table, write_result  # noqa: E402

DEFAULT_SIZES = (10_000, 100_000, 1_000_000, 4_000_000)
TARGET_S_PER_MB = 1.0

_WORDS = (
    "great sound, would buy again", "the hose leaked after a week", "arrived late but works",
    "bought 3 items for $1,299.00 on 2026-03-04 09:12", "order o000123 for user u00042",
    "session u00042-s0007 ended at 09:12:30", "scored by churn@v3 and risk@v12", "rated 4.5/5",
    "customer 9999999991 asked about the refund", "sold 1 299 000 units since 2019-2024",
    "between 2026-03-04T09:12:00Z and 2026-03-05", "sku 123-456, qty 2, total $2,450.50",
    "version 1.2.3 of the app", "noise cancelling headphones", "cheap phone case",
)
_SECRETS = (
    "jane.doe+shop@example.co.uk", "jürgen@müller.de", "+1 (415) 555-0132", "call me 4155550132",
    "06 12 34 56 78", "0049 30 1234567", "07700 900123", "4111 1111 1111 1111", "4111.1111.1111.1111",
    "DE89 3704 0044 0532 0130 00", "123-45-6789", "198.51.100.7", "2001:db8:85a3::8a2e:370:7334",
    "::ffff:192.0.2.1",
)


def shop_text(size: int, seed: int = 0, pii_rate: float = 0.03) -> str:
    """Review-like text of ``size`` characters with personal data sprinkled in (3% of phrases)."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        phrase = rng.choice(_SECRETS) if rng.random() < pii_rate else rng.choice(_WORDS)
        parts.append(phrase)
        length += len(phrase) + 2
    return ". ".join(parts)[:size]


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda size: (unit * (size // len(unit) + 1))[:size]


def _random_groups(width: int) -> Callable[[int], str]:
    def make(size: int) -> str:
        rng = random.Random(width)
        groups = [str(rng.randrange(10**width)).zfill(width) for _ in range(size // (width + 1) + 1)]
        return " ".join(groups)[:size]

    return make


def _random_digits(size: int) -> str:
    rng = random.Random(1)
    return "".join(rng.choice("0123456789") for _ in range(size))


def _plus_numbers(size: int) -> str:
    rng = random.Random(2)
    return " ".join(f"+{rng.randrange(10**7):07d}" for _ in range(size // 9 + 1))[:size]


KINDS: dict[str, Callable[[int], str]] = {
    "shop text with PII": shop_text,
    "one digit run": _repeat("7"),
    "random digits": _random_digits,
    "digit, space": _repeat("1 "),
    "random 2-digit groups": _random_groups(2),
    "random 3-digit groups": _random_groups(3),
    "random 4-digit groups": _random_groups(4),
    "dotted digits 1.1.1": _repeat("1."),
    "dots": _repeat("."),
    "spaces": _repeat(" "),
    "@ signs": _repeat("@"),
    "a@a@a": _repeat("a@"),
    "letters (no spaces)": _repeat("a"),
    "hex and colons": _repeat("ab12:"),
    "+ numbers": _plus_numbers,
    "IBAN-like DE12 3456": _repeat("DE12 3456 "),
}


def calibration_seconds() -> float:
    """CPU time of a fixed pure-Python loop: about 0.03 s on an idle core of this machine kind."""
    start = time.process_time()
    total = 0
    for i in range(1_000_000):
        total += i
    return time.process_time() - start


def time_mask(text: str, repeat: int) -> tuple[float, float]:
    """Best CPU and wall seconds of ``mask_pii(text)`` over ``repeat`` runs."""
    from shopsight.behavior.privacy import mask_pii

    best_cpu = best_wall = math.inf
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        mask_pii(text)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall


def slope(sizes: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(size), on the sizes of 100 KB and more
    (smaller ones are dominated by fixed costs); None with fewer than two such points."""
    points = [(math.log(n), math.log(max(t, 1e-6))) for n, t in zip(sizes, seconds) if n >= 100_000]
    if len(points) < 2:
        points = [(math.log(n), math.log(max(t, 1e-6))) for n, t in zip(sizes, seconds)]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="input sizes in characters, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per input below 1 MB (the best counts); 1 at 1 MB and above")
    parser.add_argument("--kinds", default="", help="only these input kinds (comma-separated names, as in the table)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    kinds = {k: v for k, v in KINDS.items() if not args.kinds or k in args.kinds.split(",")}
    console = bench_console()

    from shopsight.behavior.privacy import mask_pii

    mask_pii("warm up: +1 415 555 0132, 0049 30 1234567, DE89 3704 0044 0532 0130 00")  # one-time metadata loads
    calibration = calibration_seconds()
    results = []
    for name, make in kinds.items():
        cpu_times, walls = [], []
        for size in sizes:
            text = make(size)
            cpu, wall = time_mask(text, args.repeat if size < 1_000_000 else 1)
            cpu_times.append(cpu)
            walls.append(wall)
        k = slope(sizes, cpu_times)
        per_mb = cpu_times[-1] / (sizes[-1] / 1e6)
        results.append({"kind": name, "sizes": sizes, "cpu_s": cpu_times, "wall_s": walls, "slope": k, "cpu_s_per_mb": per_mb})
        shown = ", ".join(f"{n / 1e3:,.0f} KB {t:.3f} s" for n, t in zip(sizes, cpu_times))
        console.print(f"{name}: {shown}" + (f"; slope {k:.2f}" if k is not None else ""))

    columns = ["what", *[_size_label(n) for n in sizes], "slope", "s per MB"]
    rows = []
    for r in results:
        row = {"what": r["kind"], "slope": r["slope"], "s per MB": r["cpu_s_per_mb"]}
        row.update({_size_label(n): f"{t:.3f}" for n, t in zip(sizes, r["cpu_s"])})
        rows.append(row)
    print_table(f"mask_pii CPU seconds by input size (calibration loop {calibration:.3f} s)", rows, columns, console)
    one_mb = [r for r in results if 1_000_000 in r["sizes"]]
    worst = max((r["cpu_s"][r["sizes"].index(1_000_000)] for r in one_mb), default=None)
    worst_slope = max((r["slope"] for r in results if r["slope"] is not None), default=None)
    if worst is not None:
        console.print(f"1 MB: worst {worst:.3f} s CPU over {len(one_mb)} kinds (target ≤ {TARGET_S_PER_MB:.1f} s); steepest slope {worst_slope:.2f}")
    path = write_result(
        "privacy",
        {
            "sizes": sizes,
            "calibration_s": calibration,
            "target_s_per_mb": TARGET_S_PER_MB,
            "worst_1mb_cpu_s": worst,
            "steepest_slope": worst_slope,
            "results": results,
        },
    )
    console.print(f"Wrote {path}")
    return 0


def _size_label(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1e3:g} KB"


if __name__ == "__main__":
    raise SystemExit(main())
