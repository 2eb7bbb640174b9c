#!/usr/bin/env python
"""Paired comparison of two ShapesBench runs made on the same sessions (:mod:`diffusers_vincie.evaluation.bench_compare`).

For every protocol both runs hold (each chained mode turn by turn): the items, both success rates, the items only
one of them passes and the exact McNemar p-value. Usage::

    python benchmarks/compare_bench.py runs/bench_bicubic runs/bench_nearest --labels bicubic,nearest

Each argument is a ``shapes_bench.py --output_dir`` or its ``results.json``. Prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusers_vincie.evaluation.bench_compare import compare_runs, comparison_markdown
from diffusers_vincie.utils.cli import UsageError, run_cli


def load_results(path: Path) -> dict:
    """``path``'s ``results.json`` (``path`` a bench output folder or the file itself)."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path} has no results.json: give a shapes_bench.py --output_dir or its results.json.")
    try:
        results = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{file} is not a readable results.json ({error}); re-run shapes_bench.py.") from None
    if not isinstance(results, dict):
        raise UsageError(f"{file} is not a shapes_bench.py results.json (not a JSON object).")
    return results


def compare(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="The first run: a shapes_bench.py --output_dir or its results.json.")
    parser.add_argument("run_b", type=Path, help="The second run, on the same sessions.")
    parser.add_argument("--labels", default="A,B", help="Names of the two runs in the table, comma-separated.")
    args = parser.parse_args(argv)
    labels = args.labels.split(",")
    if len(labels) != 2 or not all(label.strip() for label in labels):
        raise UsageError(f"--labels must be two names separated by a comma, got {args.labels!r}.")
    rows = compare_runs(load_results(args.run_a), load_results(args.run_b))
    table = comparison_markdown(rows, *(label.strip() for label in labels))
    print(table, end="")
    return table


def main(argv: list[str] | None = None) -> str:
    """The command line: a bad argument is one line on stderr and exit status 2."""
    return run_cli(lambda: compare(argv), "compare_bench.py")


if __name__ == "__main__":
    main()
