"""Run every benchmark, each in its own process, and render ``benchmarks/RESULTS.md`` from their results.

    python -m benchmarks.run_all                 # all six, default sizes (about 12 minutes on 2 CPU cores)
    python -m benchmarks.run_all --large         # larger sizes
    python -m benchmarks.run_all --only tta,cache
    python -m benchmarks.run_all --render-only   # re-render RESULTS.md from benchmarks/results/*.json
    python -m benchmarks.run_all --only uplift   # `make uplift`: ensembles and TTA vs the best single model (≈ 25 min)

``uplift``, ``choice``, ``budget``, ``targets``, ``recipes`` and ``teacher`` are not part of the default run (they
train 36 members until their validation loss stops improving, then replay the merges, choice rules and time budgets on
their OOF and test files; ``recipes`` trains 54 short members, three per training recipe; ``teacher`` two generations
and a student per seed; ``make uplift``, ``make bench-targets``, ``make bench-recipes``, ``make bench-teacher``); their
sections are rendered whenever ``benchmarks/results/<name>.json`` exists.

``RESULTS.md`` is regenerated above the line ``<!-- analysis: kept by run_all -->``; the hand-written
analysis below that line is kept as it is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_WORKDIR, RESULTS_DIR

__all__ = ["BENCHMARKS", "OPTIONAL", "main", "render"]

BENCHMARKS = ("tta", "ensemble", "train", "memory", "options", "cache", "cli", "predict_ray")
OPTIONAL = ("uplift", "choice", "budget", "targets", "recipes", "teacher")
"""Run only when named in ``--only``; rendered whenever their result JSON exists."""
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
MARKER = "<!-- analysis: kept by run_all -->"
DEFAULTS = {"precision": '"32"', "channels_last": "false", "compile": "false"}


def _run_one(name: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", "--repeats", str(args.repeats), "--threads",
           str(args.threads), "--workdir", str(args.workdir), "--json", str(RESULTS_DIR / f"{name}.json")]
    if args.large:
        cmd.append("--large")
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    print(f"== {name}: {seconds:.0f} s", flush=True)
    return seconds


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(columns), "|" + "|".join("---" for _ in columns) + "|", *(line(row) for row in rows)]


def _machine(results: list[dict[str, Any]]) -> list[str]:
    m = results[0]["machine"]
    loads = ", ".join(f"{r['name']} {r['machine']['load_average_1m']}" for r in results)
    return [
        f"- **Run**: {m['date']}; CPU **{m['cpu']}**, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, timm {m['timm']}, "
        f"pytorch-lightning {m['pytorch_lightning']}.",
        f"- **Threads**: torch intra-op threads {m['torch_threads']} (interop {m['torch_interop_threads']}); DataLoader "
        "workers are separate processes with 1 thread each.",
        f"- **GPU**: {m['gpu']}. No GPU was available, so there are no GPU columns; rerun `make bench` on a GPU "
        "machine to add them." if m["gpu"] == "none" else f"- **GPU**: {m['gpu']}.",
        f"- **Load** (1-min load average as each benchmark finished; the machine is shared): {loads}.",
    ]


def _summary(results: list[dict[str, Any]]) -> list[str]:
    rows = [[r["name"], t["what"], t["target"], t["measured"], "met" if t["met"] else "**missed**", t.get("detail", "")]
            for r in results for t in r["targets"]]
    return _md_table(["benchmark", "ratio", "target", "measured", "", "detail"], rows)


def _options_verdict(result: dict[str, Any]) -> list[str]:
    speed = result.get("speedups_vs_fp32", {})
    rows = []
    for key, name in (("channels_last", "channels_last"), ("bf16", "precision: bf16"), ("compile", "compile")):
        if key in speed:
            small, big = speed[key]
            conf = DEFAULTS["precision" if key == "bf16" else key]
            faster = min(small, big) > 1.05
            rows.append([name, f"{small:.2f}×", f"{big:.2f}×", conf,
                         "faster here at both sizes" if faster else "not faster here"])
    return ["Speed-up over fp32 (higher is faster), and the current default in `conf/predict.yaml`:", "",
            *_md_table(["option", "32→28 px", "128→112 px", "default", "measured"], rows)]


def _section(r: dict[str, Any]) -> list[str]:
    doc = r["what"].strip().split("\n", 1)
    lines = [f"## {r['title']}", "", doc[1].strip() if len(doc) > 1 else "", "",
             f"Parameters: `{json.dumps(r['params'])}`", ""]
    for table in r["tables"]:
        lines += [f"**{table['title']}**", "", *_md_table(table["columns"], table["rows"]), ""]
    if r["targets"]:
        lines += _md_table(["ratio", "target", "measured", "", "detail"],
                           [[t["what"], t["target"], t["measured"], "met" if t["met"] else "**missed**", t.get("detail", "")]
                            for t in r["targets"]]) + [""]
    if r["name"] == "options":
        lines += _options_verdict(r) + [""]
    lines += [f"- {note}" for note in r["notes"]] + [""]
    if r.get("profile"):
        lines += [f"A target was missed; cProfile of one run of `{r.get('profile_of', 'ours')}` (top functions by own "
                  "time):", "", "```text",
                  r["profile"], "```", ""]
    return lines


def render(results: list[dict[str, Any]]) -> str:
    """RESULTS.md's generated part: machine, method, summary of targets, one section per benchmark."""
    lines = [
        "# Benchmark results", "",
        "Generated by `python -m benchmarks.run_all` (`make bench`) from `benchmarks/results/*.json`. Every figure "
        "is a ratio of contenders timed side by side in one process: each of ≥ 5 repeats runs every contender once, in "
        "an order that rotates between repeats, after an untimed warm-up; a contender's time is its median, a ratio "
        "is the median of the per-repeat ratios. Memory is one run per size.", "",
        *_machine(results), "", "## Targets", "", *_summary(results), "",
    ]
    for r in results:
        lines += _section(r)
    return "\n".join(lines).rstrip() + "\n"


def _write(results: list[dict[str, Any]]) -> None:
    kept = ""
    if RESULTS_MD.is_file() and MARKER in RESULTS_MD.read_text():
        kept = RESULTS_MD.read_text().split(MARKER, 1)[1]
    RESULTS_MD.write_text(render(results) + "\n" + MARKER + (kept or "\n"))
    print(f"wrote {RESULTS_MD}")


def main(argv: list[str] | None = None) -> None:
    """CLI: run the benchmarks (all, or ``--only``) and re-render RESULTS.md."""
    parser = argparse.ArgumentParser(description="Run every benchmark and write benchmarks/RESULTS.md.")
    parser.add_argument("--large", action="store_true", help="larger sizes (slow on a 2-core CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each benchmark")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="generated data and members (reused)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {list(BENCHMARKS + OPTIONAL)}")
    parser.add_argument("--render-only", action="store_true", help="only re-render RESULTS.md from saved results")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS + OPTIONAL))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; accepted: {list(BENCHMARKS + OPTIONAL)}")
    if not args.render_only:
        total = sum(_run_one(name, args) for name in chosen)
        print(f"== all: {total / 60:.1f} min", flush=True)
    results = [json.loads((RESULTS_DIR / f"{b}.json").read_text()) for b in BENCHMARKS + OPTIONAL
               if (RESULTS_DIR / f"{b}.json").is_file()]
    if not results:
        parser.error(f"no results in {RESULTS_DIR}; run the benchmarks first")
    _write(results)


if __name__ == "__main__":
    main()
