"""Peak resident memory of the relay during a whole handoff, for checkpoints of 0.5, 1 and 2 GiB.

Each handoff runs in a new process: list and download the finished
version's outputs, validate and select the checkpoint, stage it, upload it as
a new dataset version, wait until it is READY and check its listing. The
process reports its peak resident set and whether it imported torch. The
peak is ``VmHWM`` of /proc/self/status: ``ru_maxrss`` of a new process also
counts the parent's resident set when it forked, here the benchmark's own
gigabytes of tensors. A second process that only imports the same modules and
connects gives the floor that the interpreter and libraries cost.

Targets: the peak stays under 300 MB at every size, and is flat: the peak at
2 GiB is at most 1.1 times the peak at 0.5 GiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import CACHE, GIB, Target
from bench.served import Served, push_quick_kernel, served_emulator, write_manifest

SIZES = (GIB // 2, GIB, 2 * GIB)
LIMIT_MB = 300.0
_TENSOR_ELEMENTS = (4 << 20) // 4

_HANDOFF = """
import json, sys, time
from pathlib import Path
from kaggle_relay.relay import client
from kaggle_relay.relay.outputs import download_outputs
from kaggle_relay.relay.publish import publish_checkpoints
from kaggle_relay.relay.refs import DatasetRef, KernelRef

kernel, dataset, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
api = client.connect(timeout=(10.0, 300.0))
start = time.perf_counter()
if kernel:
    outputs = download_outputs(api, KernelRef.parse(kernel).with_version(1), dest)
    publish_checkpoints(api, outputs.folder / "checkpoints", DatasetRef.parse(dataset), run_id="bench-memory", timeout=120)
with open("/proc/self/status", encoding="ascii") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({
    "peak_kib": peak,
    "seconds": time.perf_counter() - start,
    "torch": "torch" in sys.modules,
}))
"""


def build_checkpoint(path: Path, size: int) -> None:
    """Write a torch checkpoint of about ``size`` bytes made of 4 MiB tensors."""
    import torch

    tensors = max(1, size // (_TENSOR_ELEMENTS * 4))
    state = {f"layers.{index}.weight": torch.zeros(_TENSOR_ELEMENTS) for index in range(tensors)}
    torch.save({"model": state, "epoch": 1, "step": 1000}, path)


def handoff(served: Served, root: Path, size: int) -> dict[str, object]:
    """Publish a version holding a checkpoint of ``size`` bytes through a new process; return its report."""
    label = f"{size * 10 // GIB:02d}"
    kernel = push_quick_kernel(served, root, f"bench-memory-{label}")
    folder = served.imports / f"memory-{label}"
    folder.mkdir(parents=True)
    checkpoint = folder / "checkpoint.pt"
    build_checkpoint(checkpoint, size)
    write_manifest(folder, [(checkpoint, 1000)])
    for path in folder.iterdir():
        served.add_output(kernel, 1, f"checkpoints/{path.name}", path.relative_to(served.imports))
    dataset = f"{served.user}/bench-memory-{label}"
    # Flush the new checkpoint now, untimed, so the handoff does not share the disk with its write-back.
    os.sync()
    try:
        report = run_child(root, kernel, dataset, root / f"download-{label}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(root / f"download-{label}", ignore_errors=True)
        for blob in (served.data / "datasets").rglob("checkpoint.pt"):
            blob.unlink()
    report["bytes"] = size
    return report


def run_child(root: Path, kernel: str, dataset: str, dest: Path) -> dict[str, object]:
    env = {**os.environ, "TMPDIR": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", _HANDOFF, kernel, dataset, str(dest)],
        env=env, stdout=subprocess.PIPE, text=True, check=True,
    )
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def main() -> list[Target]:
    root = CACHE / "memory"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    reports = []
    try:
        with served_emulator(root) as served:
            floor = run_child(root, "", "", root / "unused")
            for size in SIZES:
                reports.append(handoff(served, root, size))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    peaks = [int(str(report["peak_kib"])) * 1024 / 1e6 for report in reports]
    floor_mb = int(str(floor["peak_kib"])) * 1024 / 1e6
    targets = [
        Target(f"peak RSS at 2 GiB / {LIMIT_MB:g} MB", peaks[-1] / LIMIT_MB, at_most=1.0),
        Target("peak RSS at 2 GiB / peak at 0.5 GiB", peaks[-1] / peaks[0], at_most=1.1),
    ]
    print("\n== peak resident memory of a handoff process (download, validate, stage, upload, READY)")
    print(f"  imports and connect only      {floor_mb:7.1f} MB")
    for report, peak in zip(reports, peaks, strict=True):
        size = int(str(report["bytes"])) / GIB
        seconds = float(str(report["seconds"]))
        print(
            f"  handoff of {size:4.1f} GiB            {peak:7.1f} MB   {seconds:6.2f} s   "
            f"torch imported: {'yes' if report['torch'] else 'no'}"
        )
    for target in targets:
        bound = f"<= {target.at_most:g}x" if target.at_most is not None else f">= {target.at_least:g}x"
        print(f"  {'PASS' if target.passed else 'MISS'}  {target.description}: {target.ratio:.2f}x (target {bound})")
    return targets


if __name__ == "__main__":
    # Run from the repository root as ``python -m bench.bench_memory``.
    main()
