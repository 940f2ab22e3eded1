"""An emulator in its own process, and a relay client connected to it, for the transfer benchmarks.

The server runs in a child process so that it has its own interpreter lock:
in one process, the server's threads and the client would take turns and the
benchmark would measure their sum.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from kaggle_relay.cli.rehearse import serve_emulator

USER = "bench-user"
KEY = "bench-key"


@dataclass
class Served:
    """A running emulator: its URL, its data folder and the relay client authenticated to it."""

    url: str
    data: Path
    api: Any
    process: subprocess.Popen[str]

    @property
    def imports(self) -> Path:
        """Files placed here can become kernel outputs without passing through memory."""
        folder = self.data / "imports"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add_output(self, kernel: str, version: int, name: str, source: Path) -> None:
        """Link ``source`` (a file under ``imports``) into the outputs of ``kernel`` version ``version``."""
        relative = (self.imports / source).relative_to(self.imports).as_posix()
        response = requests.post(
            f"{self.url}/_emulator/outputs",
            json={"kernel": kernel, "version": version, "name": name, "file": relative},
            timeout=30,
        )
        response.raise_for_status()

    @property
    def user(self) -> str:
        """The user the relay client authenticated as."""
        from kaggle_relay.relay import client

        return client.username(self.api)


def write_credentials(folder: Path, user: str, key: str) -> Path:
    """Write throwaway credentials into ``folder``/kaggle-config; return that folder (a KAGGLE_CONFIG_DIR)."""
    config = folder / "kaggle-config"
    config.mkdir(parents=True, exist_ok=True)
    credentials = config / "kaggle.json"
    credentials.write_text(json.dumps({"username": user, "key": key}), encoding="utf-8")
    credentials.chmod(0o600)
    return config


@contextmanager
def served_emulator(root: Path, *, processing_delay: float = 0.0, transfer_rate_mb: float = 0.0) -> Iterator[Served]:
    """Start ``kaggle-relay emulator serve`` under ``root`` and connect the relay to it.

    ``transfer_rate_mb`` paces each transfer to that many MB/s (0: unpaced).
    """
    data = root / "emulator"
    config = write_credentials(root, USER, KEY)
    arguments = [
        "emulator", "serve", "--data", str(data), "--processing-delay", str(processing_delay),
        "--user", f"{USER}:{KEY}", "--transfer-rate", str(transfer_rate_mb),
    ]
    with serve_emulator(arguments) as (process, url):
        os.environ["KAGGLE_CONFIG_DIR"] = str(config)
        os.environ["KAGGLE_RELAY_API_ENDPOINT"] = url
        # The kaggle client keeps its resumable-upload state in the temp folder.
        tempfile.tempdir = str(root)
        from kaggle_relay.relay import client

        client.forget_clients()
        yield Served(url, data, client.connect(timeout=(10.0, 300.0)), process)


def push_quick_kernel(served: Served, root: Path, slug: str) -> str:
    """Push a script kernel that ends at once, wait for it, and return its id (``owner/slug``)."""
    from kaggle_relay.relay import kernels

    folder = root / f"kernel-{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("print('done')\n", encoding="utf-8")
    meta = {
        "id": f"{USER}/{slug}", "title": slug.replace("-", " ").title(), "code_file": "main.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": False,
        "enable_tpu": False, "enable_internet": False, "dataset_sources": [],
    }
    (folder / "kernel-metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    pushed = kernels.push_kernel(served.api, folder)
    kernels.wait_for_kernel(served.api, pushed.ref, timeout=120, interval=0.2)
    return str(meta["id"])


def write_manifest(folder: Path, files: list[tuple[Path, int]], *, run_id: str = "bench-run") -> Path:
    """Record ``(checkpoint, step)`` pairs in ``folder``'s relay-manifest.json, as the runtime would."""
    from kaggle_relay.runtime.formats import TORCH_ZIP
    from kaggle_relay.runtime.manifest import Manifest, ManifestEntry, utc_now
    from kaggle_relay.runtime.validate import file_sha256

    manifest = Manifest(folder=folder, run_id=run_id)
    for path, step in files:
        manifest.upsert(ManifestEntry(
            file=path.name, bytes=path.stat().st_size, sha256=file_sha256(path), format=TORCH_ZIP,
            epoch=step // 1000, step=step, created=utc_now(), run_id=run_id,
        ))
    manifest.save()
    return manifest.path
