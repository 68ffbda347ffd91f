"""Run every benchmark module side by side in one process and print one table.

Each ``benchmarks/bench_<area>.py`` exposes ``run(quick: bool) -> list[dict]`` with rows
``{benchmark, ours, peer, ratio, unit, target, met, notes}``. Ratios are measured interleaved inside each module.

    python -m benchmarks                 # everything, full sizes
    python -m benchmarks --quick         # small sizes, a couple of minutes on a laptop CPU
    python -m benchmarks --only metric trainer --json results.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).parent


def available_areas() -> list[str]:
    return sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))


def machine_description() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, {device}, torch {torch.__version__}"


def format_table(rows: list[dict]) -> str:
    header = "| area | benchmark | ours | peer | ratio | unit | target | met | notes |"
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "–"}[row.get("met")]
        cells = [
            row["area"],
            row["benchmark"],
            _number(row.get("ours")),
            _number(row.get("peer")),
            _number(row.get("ratio")),
            row.get("unit", ""),
            row.get("target", ""),
            met,
            row.get("notes", ""),
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes on a CPU)")
    parser.add_argument("--only", nargs="+", choices=available_areas(), help="run only these areas")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    rows, failures = [], []
    for area in args.only or available_areas():
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{area}")
            for row in module.run(quick=args.quick):
                rows.append({"area": area, **row})
        except Exception:  # one broken area must not hide the others' figures
            failures.append(area)
            rows.append(
                {
                    "area": area,
                    "benchmark": "FAILED",
                    "met": False,
                    "notes": traceback.format_exc(limit=1).strip().splitlines()[-1],
                }
            )
        print(f"[{area}] done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nMachine: {machine_description()}\n")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_description(), "rows": rows}, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
