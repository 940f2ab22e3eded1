"""Run every ``bench/bench_*.py`` benchmark's ``main()`` in one process, then delete the 1 GiB file.

Each ``main()`` prints its own table and returns its targets; this script
prints a summary. It exits 0 even when a target is missed, because timings
on a shared machine swing too much to fail a build on.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import remove_cache  # noqa: E402  (needs the repository on sys.path)


def main() -> int:
    summary: list[tuple[str, str]] = []
    failed = 0
    try:
        for path in sorted((ROOT / "bench").glob("bench_*.py")):
            module = importlib.import_module(f"bench.{path.stem}")
            try:
                targets = module.main() or []
            except Exception:
                traceback.print_exc()
                failed += 1
                summary.append((path.stem, "ERROR"))
                continue
            summary.extend((f"{path.stem}: {t.description} {t.ratio:.2f}x", "PASS" if t.passed else "MISS") for t in targets)
    finally:
        remove_cache()
    print("\n== summary")
    for line, verdict in summary:
        print(f"  {verdict}  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
