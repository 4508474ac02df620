#!/usr/bin/env python3
"""The reliability figures the tests measure, as a table in docs/reliability.md.

The pytest suite writes its figures into build/reliability.json (tests/helpers.py,
record_reliability); this script adds those of the C++ programs and writes the table.

    update_reliability_table.py record-meson LABEL TESTLOG [--seconds S]
        Add a `meson test` run (its meson-logs/testlog.json) to the report under LABEL: programs
        run and passed, the closing "N passed, M failed" of each, their "reliability: KEY = VALUE"
        lines, and S, the seconds the build and the run took when given.
    update_reliability_table.py [update]
        Rewrite docs/reliability.md between <!-- reliability:begin --> and <!-- reliability:end -->.
"""

import argparse
import functools
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def load(report_path: Path) -> dict:
    return json.loads(report_path.read_text()) if report_path.exists() else {}


def save(report_path: Path, report: dict) -> None:
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def meson_run(testlog: Path, seconds: int | None) -> dict:
    """What one `meson test` run shows, from its JSON log (one test per line)."""
    tests = [json.loads(line) for line in testlog.read_text().splitlines() if line.strip()]
    run = {"programs": len(tests), "programs_ok": 0, "checks_passed": 0, "checks_failed": 0, "figures": {}}
    for test in tests:
        name = test["name"].split(":")[-1]
        run["programs_ok"] += test["result"] == "OK"
        closing = re.findall(r"^(\d+) passed, (\d+) failed$", test.get("stdout", ""), re.MULTILINE)
        if closing:
            run["checks_passed"] += int(closing[-1][0])
            run["checks_failed"] += int(closing[-1][1])
        figures = dict(re.findall(r"^reliability: (\w+) = (\S+)$", test.get("stdout", ""), re.MULTILINE))
        if figures:
            run["figures"][name] = {key: int(value) for key, value in figures.items()}
    if seconds is not None:
        run["build_and_test_seconds"] = seconds
    return run


# ---- The table ---------------------------------------------------------------------------


def bad_inputs_row(report):
    entries = report.get("bad_inputs", {})
    cpp = report.get("cpp", {}).get("build", {}).get("figures", {}).get("bad_arguments", {})
    total = sum(entry["tried"] for entry in entries.values()) + cpp.get("bad_inputs_tried", 0)
    parts = [f"{entry['tried']} {name}" for name, entry in sorted(entries.items())]
    if cpp:
        parts.append(f"{cpp['bad_inputs_tried']} from C++")
    return "Bad inputs tried, each refused with an exception", f"{total} ({'; '.join(parts)})"


def property_row(report):
    properties = report.get("property_examples", {})
    parts = []
    for name, figures in sorted(properties.items()):
        part = f"{figures['examples']} {name}"
        if "error_checked" in figures:
            part += f", {figures['error_checked']} of them with the error bound checked"
        parts.append(part)
    total = sum(figures["examples"] for figures in properties.values())
    return "Property-based examples run", f"{total} ({'; '.join(parts)})"


def cpp_concurrency(figures):
    """What tests/cpp/concurrency.cpp reports, in words."""
    words = (
        f"{figures['threads']} threads x {figures['iterations_per_thread']} backward calls, "
        f"cache cleared and re-limited {figures['cache_changes']} times"
    )
    if "cache_hits" in figures:
        words += f", {figures['cache_hits']} cache hits between changes"
    return words


def concurrency_row(report):
    python = report.get("concurrency", {}).get("Python threads on a shared model")
    cpp = report.get("cpp", {}).get("build", {}).get("figures", {}).get("concurrency")
    parts = []
    if python:
        parts.append(
            f"Python: {python['threads']} threads x {python['iterations_per_thread']} forward+backward "
            f"passes, mismatches {sum(python['mismatches'].values())}, errors {len(python['errors'])}, "
            f"hung threads {python['hung_threads']}, cache cleared and re-limited {python['cache_changes']} times"
        )
    if cpp:
        parts.append(f"C++: {cpp_concurrency(cpp)}")
    return "Threads x iterations held (results bit-identical to one thread)", "; ".join(parts)


def leaks_row(report):
    leaks = report.get("leaks", {}).get("RSS over re-quantization rounds")
    if not leaks:
        return "RSS growth", ""
    return (
        "RSS growth",
        f"{leaks['rss_growth_mb']} MB over {leaks['rounds']} re-quantization rounds after "
        f"{leaks['warm_up_rounds']} of warm-up (bound {leaks['bound_mb']} MB; peak "
        f"{leaks['rss_peak_growth_mb']} MB); cache entries afterwards: {leaks['cache_entries_after']}",
    )


# The sanitized builds of the C++ tests (scripts/dev.sh, run_sanitized_cpp_tests): label, row name.
SANITIZED_BUILDS = (
    ("asan-ubsan", "AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer"),
    ("tsan", "ThreadSanitizer"),
)


def sanitizer_row(label, name, report):
    run = report.get("cpp", {}).get(label)
    if not run:
        return name, ""
    verdict = "clean" if run["programs_ok"] == run["programs"] and run["checks_failed"] == 0 else "FAILED"
    figure = (
        f"{verdict}: {run['programs_ok']} of {run['programs']} C++ test programs, "
        f"{run['checks_passed']} checks passed, {run['checks_failed']} failed"
    )
    if "concurrency" in run["figures"]:
        figure += f"; concurrency: {cpp_concurrency(run['figures']['concurrency'])}"
    if "build_and_test_seconds" in run:
        figure += f"; build and run {run['build_and_test_seconds']} s"
    return name, figure


ROWS = (bad_inputs_row, property_row, concurrency_row, leaks_row) + tuple(
    functools.partial(sanitizer_row, label, name) for label, name in SANITIZED_BUILDS
)


def table(report: dict) -> str:
    lines = ["| Check | Last run |", "|---|---|"]
    for row in ROWS:
        name, figure = row(report)
        lines.append(f"| {name} | {figure or 'not run'} |")
    return "\n".join(lines)


def update_page(readme: Path, report: dict) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table(report)}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_report = os.environ.get("QLGRAD_RELIABILITY_REPORT", ROOT / "build" / "reliability.json")
    parser.add_argument("--report", type=Path, default=default_report)
    parser.add_argument("--readme", type=Path, default=ROOT / "docs" / "reliability.md")
    commands = parser.add_subparsers(dest="command")
    record = commands.add_parser("record-meson")
    record.add_argument("label")
    record.add_argument("testlog", type=Path)
    record.add_argument("--seconds", type=int)
    commands.add_parser("update")
    args = parser.parse_args()

    report = load(args.report)
    if args.command == "record-meson":
        report.setdefault("cpp", {})[args.label] = meson_run(args.testlog, args.seconds)
        save(args.report, report)
    else:
        update_page(args.readme, report)


if __name__ == "__main__":
    main()
