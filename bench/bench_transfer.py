"""The relay's data path against plain HTTP transfers of the same bytes from the same emulator.

- Download: ``download_outputs`` of a 1 GiB checkpoint and its manifest
  (listing, name checks, four files at a time, sha256 while streaming, size
  check) against a plain ``requests`` GET streamed to a file in 1 MiB chunks.
  Target: at least 0.8 of the plain throughput.
- Upload: ``publish_folder`` of a folder holding the 1 GiB checkpoint, with
  every RPC of a new dataset version, the resumable PUT and the version's
  creation. The baseline is a plain ``http.client`` PUT of the same file, in
  1 MiB blocks, to an upload URL from StartBlobUpload. Target: at least 0.8.
- Attribution rows, without targets: the download with the hash left out,
  the upload of a file this process has not hashed before (hashed while
  sent), and the kaggle client's own PUT, which the relay replaces.
- Bytes: a finished version whose output contains ten checkpoints, their
  manifest and logs is harvested and published as the chain does it. The
  table shows the bytes that crossed the network each way.

The emulator runs in its own process (``bench/served.py``). Before each timed
call the benchmark deletes what the previous one wrote, on both sides, and
runs ``os.sync()``, untimed, so no subject pays for another's write-back. The
order of the subjects alternates each round.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import requests

from bench.common import CACHE, GIB, Target, big_checkpoint, print_table
from bench.served import Served, push_quick_kernel, served_emulator, write_manifest

ROUNDS = 5
CHECKPOINT_NAME = "checkpoints/checkpoint-1gib.pt"
MIB = 1 << 20
#: The paced comparison: a link of this many MB/s, and this many bytes of the checkpoint.
PACED_MB = 200.0
PACED_BYTES = 192 * MIB


@dataclass
class Timing:
    """Medians of one subject: wall seconds, CPU seconds of this process and of the emulator."""

    wall: float
    client_cpu: float
    server_cpu: float


def time_alternating(
    subjects: dict[str, Callable[[], object]], settle: Callable[[], None], server_pid: int
) -> dict[str, Timing]:
    """One warm-up round, then ``ROUNDS`` timed rounds, the order shifted each round; return medians."""
    names = list(subjects)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for round_number in range(ROUNDS + 1):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            settle()
            cpu, server, start = time.process_time(), process_cpu(server_pid), time.perf_counter()
            subjects[name]()
            sample = (time.perf_counter() - start, time.process_time() - cpu, process_cpu(server_pid) - server)
            if round_number > 0:
                samples[name].append(sample)
    return {
        name: Timing(*(statistics.median(values[i] for values in rows) for i in range(3)))
        for name, rows in samples.items()
    }


def process_cpu(pid: int) -> float:
    """Return the user and system CPU seconds process ``pid`` has used (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256_rate(path: Path) -> float:
    """Return the median bytes per second of a sha256 over ``path`` read from the page cache, 1 MiB at a time."""
    def once() -> float:
        digest = hashlib.sha256()
        start = time.perf_counter()
        with open(path, "rb") as handle:
            while block := handle.read(MIB):
                digest.update(block)
        return path.stat().st_size / (time.perf_counter() - start)

    return statistics.median(once() for _ in range(3))


def report(title: str, timings: dict[str, Timing], size: int, target: Target) -> None:
    print_table(title, {name: timing.wall for name, timing in timings.items()}, [target])
    width = max(len(name) for name in timings)
    print("  info  throughput and CPU seconds (this process + emulator), medians:")
    for name, timing in timings.items():
        print(
            f"        {name.ljust(width)}  {size / timing.wall / 1e6:6.0f} MB/s   "
            f"cpu {timing.client_cpu:5.2f} s + {timing.server_cpu:5.2f} s"
        )


def empty(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


# --- download ---------------------------------------------------------------------------


def download_subjects(served: Served, kernel: str, work: Path) -> dict[str, Callable[[], object]]:
    from kaggle_relay.relay.outputs import download_outputs, list_outputs
    from kaggle_relay.relay.refs import KernelRef

    ref = KernelRef.parse(kernel).with_version(1)
    url = next(item.url for item in list_outputs(served.api, ref)[0] if item.name == CHECKPOINT_NAME)

    def plain_get() -> None:
        with requests.get(url, stream=True, timeout=300) as response, open(work / "plain.pt", "wb") as handle:
            response.raise_for_status()
            for chunk in response.iter_content(MIB):
                handle.write(chunk)

    def relay_download() -> None:
        outputs = download_outputs(served.api, ref, work / "relay")
        assert any(path.name == Path(CHECKPOINT_NAME).name for path in outputs.files)

    def relay_download_unhashed() -> None:
        # Attribution only: the same call with a digest that does nothing, to show what the hash costs.
        from kaggle_relay.runtime import hashing

        hashing.hashlib = SimpleNamespace(sha256=_NoDigest)  # type: ignore[assignment]
        try:
            relay_download()
        finally:
            hashing.hashlib = hashlib

    return {"plain GET": plain_get, "relay download_outputs": relay_download, "relay, hash left out": relay_download_unhashed}


class _NoDigest:
    def update(self, data: object) -> None:
        return None

    def hexdigest(self) -> str:
        return ""


# --- upload -----------------------------------------------------------------------------


def upload_subjects(served: Served, checkpoint: Path, work: Path) -> dict[str, Callable[[], object]]:
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest

    from kaggle_relay.relay import datasets
    from kaggle_relay.relay.refs import DatasetRef
    from kaggle_relay.runtime import validate

    size = checkpoint.stat().st_size
    dataset = DatasetRef.parse(f"{served.user}/bench-transfer-upload")
    counter = iter(range(1, 1000))

    def start_upload() -> str:
        request = ApiStartBlobUploadRequest()
        request.type = ApiBlobType.DATASET
        request.name = checkpoint.name
        request.content_length = size
        with served.api.build_kaggle_client() as kaggle:
            return str(kaggle.blobs.blob_api_client.start_blob_upload(request).create_url)

    def plain_put() -> None:
        parts = urlsplit(start_upload())
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300, blocksize=MIB)
        with open(checkpoint, "rb") as body:
            connection.request("PUT", parts.path, body=body, headers={"Content-Length": str(size)})
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"plain PUT failed with HTTP {response.status}")

    # In a chain the relay hashed the checkpoint while downloading it; do the same, untimed.
    digest = validate.file_sha256(checkpoint)

    def stage() -> Path:
        folder = work / "stage"
        empty(folder)
        os.link(checkpoint, folder / checkpoint.name)
        return folder

    def publish(folder: Path) -> None:
        marker = f"bench round {next(counter)}"
        datasets.publish_folder(served.api, dataset, folder, title="Bench transfer upload", notes=marker, marker=marker)

    def relay_publish() -> None:
        folder = stage()
        # As the chain's staging does: the link changed the file's ctime, so record the hash again.
        validate.remember_sha256(folder / checkpoint.name, digest)
        publish(folder)

    def relay_publish_cold() -> None:
        # A file this process has not hashed (after a restart of the relay, say) is hashed while it is sent.
        publish(stage())

    def client_put() -> None:
        # Attribution only: the kaggle client's own PUT (KaggleApi.upload_complete), which the relay replaces.
        result = type(served.api).upload_complete(served.api, str(checkpoint), start_upload(), True)
        if result != 1:
            raise RuntimeError(f"the client's PUT ended with result {result}")

    return {
        "plain PUT": plain_put,
        "relay publish_folder": relay_publish,
        "relay, file not hashed before": relay_publish_cold,
        "kaggle client's own PUT": client_put,
    }


def settle_emulator(served: Served) -> None:
    """Delete uploaded blobs and dataset files on the server side; the benchmark never reads them back."""
    for folder in (served.data / "blobs", served.data / "datasets"):
        for path in folder.rglob("*") if folder.exists() else []:
            if path.is_file() and path.suffix != ".json":
                path.unlink()


# --- bytes per day ----------------------------------------------------------------------


def bytes_per_day(served: Served, root: Path) -> dict[str, int]:
    """Harvest and publish a version with ten checkpoints and logs; return the bytes each way."""
    import torch

    from kaggle_relay.relay.config import ChainConfig
    from kaggle_relay.relay.harvest import download_pattern, fetch_needed
    from kaggle_relay.relay.outputs import open_outputs
    from kaggle_relay.relay.publish import publish_checkpoints
    from kaggle_relay.relay.refs import DatasetRef, KernelRef

    kernel = push_quick_kernel(served, root, "bench-ten-checkpoints")
    source = served.imports / "ten"
    source.mkdir(parents=True, exist_ok=True)
    saved = []
    for index in range(1, 11):
        path = source / f"ckpt-step{index * 1000:06d}.pt"
        torch.save({"model": {"weight": torch.full((8 * MIB // 4,), float(index))}, "step": index * 1000}, path)
        saved.append((path, index * 1000))
    write_manifest(source, saved)
    (source / "train.log").write_text("epoch 1 loss 0.5\n" * 200_000, encoding="utf-8")
    (source / "metrics.csv").write_text("step,loss\n" + "1000,0.5\n" * 100_000, encoding="utf-8")
    for path in sorted(source.iterdir()):
        folder = "logs" if path.suffix in (".log", ".csv") else "checkpoints"
        served.add_output(kernel, 1, f"{folder}/{path.name}", path.relative_to(served.imports))
    in_output = sum(path.stat().st_size for path in source.iterdir())

    # The harvest of a chain with default settings: its download pattern, then only the needed files.
    chain = ChainConfig(name="bench", kernel=kernel, dataset=f"{served.user}/bench-ten-checkpoints")
    listing = open_outputs(served.api, KernelRef.parse(kernel).with_version(1), root / "harvest",
                           file_pattern=download_pattern(chain))
    fetch_needed(listing, chain, last_step=None)
    outputs = listing.finish()
    result = publish_checkpoints(
        served.api, outputs.folder / "checkpoints", DatasetRef.parse(chain.dataset), run_id="bench-ten", timeout=60,
    )
    selected = Path(result.checkpoint.path).stat().st_size if result.checkpoint else 0
    return {
        "in the version's output": in_output,
        "downloaded by the relay": sum(path.stat().st_size for path in outputs.files),
        "uploaded by the relay": sum(result.sizes.values()),
        "selected checkpoint alone": selected,
    }


def print_bytes(counts: dict[str, int]) -> None:
    width = max(len(name) for name in counts)
    print("\n== bytes moved for one day: ten 8 MiB checkpoints, their manifest and logs")
    for name, count in counts.items():
        print(f"  {name.ljust(width)}  {count / 1e6:10.2f} MB")
    output = counts["in the version's output"]
    print(f"  info  downloaded / output: {counts['downloaded by the relay'] / output:.3f}; "
          f"uploaded / output: {counts['uploaded by the relay'] / output:.3f}")


# --- a paced link ---------------------------------------------------------------------


def paced_download(root: Path, checkpoint: Path) -> None:
    """Compare the download again on an emulator that paces transfers to PACED_MB MB/s, like a real link.

    Only the first PACED_BYTES of the checkpoint are used, so a round takes about a second.
    """
    empty(root)
    with served_emulator(root, transfer_rate_mb=PACED_MB) as served:
        kernel = push_quick_kernel(served, root, "bench-paced")
        part = served.imports / Path(CHECKPOINT_NAME).name
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(checkpoint, "rb") as source, open(part, "wb") as target:
            target.write(source.read(PACED_BYTES))
        served.add_output(kernel, 1, CHECKPOINT_NAME, part)
        work = root / "work"

        def settle() -> None:
            empty(work)
            os.sync()

        subjects = download_subjects(served, kernel, work)
        del subjects["relay, hash left out"]
        timings = time_alternating(subjects, settle, served.process.pid)
    ratio = timings["plain GET"].wall / timings["relay download_outputs"].wall
    note = Target(f"download throughput / plain GET at {PACED_MB:g} MB/s", ratio)
    report(f"download of {PACED_BYTES / MIB:.0f} MiB over a link paced to {PACED_MB:g} MB/s", timings, PACED_BYTES, note)


# --- main -------------------------------------------------------------------------------


def main() -> list[Target]:
    root = CACHE / "transfer"
    empty(root)
    checkpoint = big_checkpoint()
    targets: list[Target] = []
    try:
        with served_emulator(root) as served:
            kernel = push_quick_kernel(served, root, "bench-transfer")
            folder = served.imports / "one"
            folder.mkdir(parents=True)
            os.link(checkpoint, folder / Path(CHECKPOINT_NAME).name)
            write_manifest(folder, [(folder / Path(CHECKPOINT_NAME).name, 3000)])
            for path in folder.iterdir():
                served.add_output(kernel, 1, f"checkpoints/{path.name}", path.relative_to(served.imports))

            work = root / "work"

            def settle() -> None:
                empty(work)
                settle_emulator(served)
                os.sync()

            size = checkpoint.stat().st_size
            down = time_alternating(download_subjects(served, kernel, work), settle, served.process.pid)
            targets.append(Target("download throughput / plain GET", down["plain GET"].wall / down["relay download_outputs"].wall, at_least=0.8))
            report(f"download of {size / GIB:.2f} GiB ({ROUNDS} rounds, medians)", down, size, targets[-1])

            up = time_alternating(upload_subjects(served, checkpoint, work), settle, served.process.pid)
            targets.append(Target("upload throughput / plain PUT", up["plain PUT"].wall / up["relay publish_folder"].wall, at_least=0.8))
            report(f"upload of {size / GIB:.2f} GiB ({ROUNDS} rounds, medians)", up, size, targets[-1])
            print(f"  info  raw: sha256 of the file from the page cache {sha256_rate(checkpoint) / 1e6:.0f} MB/s")

            settle()
            print_bytes(bytes_per_day(served, root))
        paced_download(root / "paced", checkpoint)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"  info  1-minute load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return targets


if __name__ == "__main__":
    # Run from the repository root as ``python -m bench.bench_transfer``.
    main()
