"""Run every ``bench/bench_*.py`` benchmark, each in a new process, then delete the 1 GiB file.

Each benchmark gets a process of its own because one leaves the allocator
warm for the next. After bench_save frees a gigabyte of tensors, a full
``torch.load`` in the same process reuses that memory without page faults
and ran 5 to 10 times faster than in a new process in our runs, which skews
every ratio against it. Inside a benchmark, baseline and subject still run in one
process, interleaved round by round.

Each ``main()`` prints its own table and returns its targets; this script
prints a summary. It exits 0 even when a target is missed, because timings
on a shared machine swing too much to fail a build on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import remove_cache  # noqa: E402  (needs the repository on sys.path)

_MARKER = "BENCH-TARGETS "
_CHILD = (
    "import importlib, json, sys\n"
    "module = importlib.import_module(sys.argv[1])\n"
    "targets = module.main() or []\n"
    "rows = [[t.description, t.ratio, t.passed] for t in targets]\n"
    f"print({_MARKER!r} + json.dumps(rows))\n"
)


def run_benchmark(name: str) -> list[tuple[str, str]] | None:
    """Run ``bench.<name>`` in a new process; return its summary rows, or None if it failed."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, f"bench.{name}"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    rows = None
    for line in result.stdout.splitlines():
        if line.startswith(_MARKER):
            rows = json.loads(line[len(_MARKER):])
        else:
            print(line, flush=True)
    if result.returncode != 0 or rows is None:
        return None
    return [(f"{name}: {description} {ratio:.2f}x", "PASS" if passed else "MISS") for description, ratio, passed in rows]


def main() -> int:
    summary: list[tuple[str, str]] = []
    failed = 0
    try:
        for path in sorted((ROOT / "bench").glob("bench_*.py")):
            rows = run_benchmark(path.stem)
            if rows is None:
                failed += 1
                summary.append((path.stem, "ERROR"))
                continue
            summary.extend(rows)
    finally:
        remove_cache()
    print("\n== summary")
    for line, verdict in summary:
        print(f"  {verdict}  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
