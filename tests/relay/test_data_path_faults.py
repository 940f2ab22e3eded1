"""Faults on the relay's data path: parallel downloads, streamed fetches and streaming uploads.

The downloads and uploads run through the real kaggle client against the
emulator. The cases the emulator cannot produce (a gzip-encoded body, a
chunked body cut short, an upload server that reports more bytes than the
file has) run against a small HTTP server on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from kaggle_relay.errors import CheckpointInvalidError, KaggleUnavailableError
from kaggle_relay.relay import client, kernels, retry, upload
from kaggle_relay.relay.fetch import fetch
from kaggle_relay.relay.refs import KernelRef
from kaggle_relay.runtime.atomic import TEMP_PREFIX
from kaggle_relay.runtime.validate import known_sha256
from tests.relay import emulated
from tests.relay.chainkit import (
    KERNEL,
    finish,
    next_day_process,
    short_emulator,
    wait_until,
    write_step_project,
)
from tests.relay.emulated import script_kernel

relay_api = emulated.relay_api
__all__ = ["relay_api", "short_emulator"]

MIB = 1 << 20
#: Threads the data path starts; none may outlive the call that started it.
DATA_PATH_THREADS = ("relay-download", "relay-fetch-sha256", "relay-upload-sha256")


# --- helpers -----------------------------------------------------------------


def finished_kernel(api: Any, tmp_path: Path) -> KernelRef:
    """Push a script that writes no outputs and wait for it; tests add outputs through the emulator."""
    pushed = kernels.push_kernel(api, script_kernel(tmp_path, "data-path", "print('done')\n"))
    kernels.wait_for_kernel(api, pushed.ref, timeout=60, interval=0.1)
    return pushed.ref


def add_outputs(emulator: Any, ref: KernelRef, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        emulator.add_output(str(ref.unversioned()), ref.require_version(), name, data)


def data_path_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith(DATA_PATH_THREADS)}


def new_thread_names(before: set[threading.Thread]) -> list[str]:
    return sorted(thread.name for thread in data_path_threads() - before if thread.is_alive())


def temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.startswith(TEMP_PREFIX)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def odd_sized_files() -> dict[str, bytes]:
    return {
        "empty.bin": b"",
        "one-byte.bin": b"\x01",
        "ckpt/exactly-1mib.pt": os.urandom(MIB),
        "ckpt/1mib-plus-one.pt": os.urandom(MIB + 1),
        "ckpt/3mib-plus-seven.pt": os.urandom(3 * MIB + 7),
        "logs/train.txt": b"step 1\n" * 1000,
    }


class LocalServer:
    """An HTTP/1.1 server on 127.0.0.1 whose GET and PUT responses come from ``routes`` (path -> handler)."""

    def __init__(self, routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                routes[self.path](self)

            def do_PUT(self) -> None:
                routes[self.path](self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-http", daemon=True)

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def no_leftover_threads() -> Iterator[None]:
    before = data_path_threads()
    yield
    assert new_thread_names(before) == []


# --- parallel downloads under faults -------------------------------------------


@pytest.mark.parametrize("kind", ["drop", "500", "truncate", "expire", "slow"])
def test_parallel_downloads_survive_fault(
    relay_api: Any, emulator: Any, tmp_path: Path, kind: str, no_leftover_threads: None
) -> None:
    ref = finished_kernel(relay_api, tmp_path)
    files = odd_sized_files()
    add_outputs(emulator, ref, files)
    # Three faults hit three of the four downloads in flight.
    emulator.faults.inject("download", kind, times=3, seconds=0.2)

    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    assert emulator.faults.pending() == []
    for name, data in files.items():
        path = outputs.folder / name
        assert path.read_bytes() == data, name
        assert known_sha256(path) == sha256(data), name
    assert temporaries(outputs.folder) == []


def test_mixed_faults_on_several_files_at_once(
    relay_api: Any, emulator: Any, tmp_path: Path, no_leftover_threads: None
) -> None:
    ref = finished_kernel(relay_api, tmp_path)
    files = odd_sized_files()
    add_outputs(emulator, ref, files)
    for kind in ("truncate", "drop", "expire", "500", "truncate"):
        emulator.faults.inject("download", kind)

    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    assert emulator.faults.pending() == []
    assert sorted(outputs.files) == sorted(outputs.folder / name for name in files)
    for name, data in files.items():
        assert (outputs.folder / name).read_bytes() == data, name
    assert temporaries(outputs.folder) == []


def test_failed_harvest_then_rerun_into_same_folder(
    relay_api: Any, emulator: Any, tmp_path: Path, no_leftover_threads: None
) -> None:
    ref = finished_kernel(relay_api, tmp_path)
    files = odd_sized_files()
    add_outputs(emulator, ref, files)
    dest = tmp_path / "harvest"
    before = data_path_threads()
    # More failures than the read policy's attempts: at least one file gives up.
    emulator.faults.inject("download", "500", times=40)

    with pytest.raises(KaggleUnavailableError):
        kernels.download_outputs(relay_api, ref, dest)

    assert new_thread_names(before) == []
    assert temporaries(dest) == []
    emulator.faults.clear()

    outputs = kernels.download_outputs(relay_api, ref, dest)

    assert sorted(path.relative_to(outputs.folder).as_posix() for path in outputs.folder.rglob("*") if path.is_file()) == sorted(files)
    for name, data in files.items():
        assert (outputs.folder / name).read_bytes() == data, name
        assert known_sha256(outputs.folder / name) == sha256(data), name


def test_download_threads_keep_chain_retry_policy(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished_kernel(relay_api, tmp_path)
    data = os.urandom(1000)
    add_outputs(emulator, ref, {"ckpt.pt": data})
    # A chain allowing more attempts than the default read policy (6) must get them in every thread.
    patient = retry.RetryPolicy(max_attempts=10, initial_seconds=0.01, max_seconds=0.02, total_seconds=30.0)
    emulator.faults.inject("download", "500", times=7)

    with retry.policy_scope(patient):
        outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    assert (outputs.folder / "ckpt.pt").read_bytes() == data
    assert emulator.faults.pending() == []


def test_download_threads_keep_single_attempt_policy(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished_kernel(relay_api, tmp_path)
    add_outputs(emulator, ref, {"ckpt.pt": b"x" * 10})
    single = retry.RetryPolicy(max_attempts=1, initial_seconds=0.01, max_seconds=0.02, total_seconds=30.0)
    emulator.faults.inject("download", "500")

    with retry.policy_scope(single), pytest.raises(KaggleUnavailableError):
        kernels.download_outputs(relay_api, ref, tmp_path / "harvest")


# --- the hash cache ------------------------------------------------------------------


def test_replaced_download_of_same_size_is_not_trusted(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished_kernel(relay_api, tmp_path)
    original = os.urandom(MIB + 1)
    add_outputs(emulator, ref, {"ckpt.pt": original})
    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
    path = outputs.folder / "ckpt.pt"
    assert known_sha256(path) == sha256(original)

    for round_number in range(3):
        # Each replacement may reuse the inode the previous one freed.
        other = os.urandom(MIB + 1)
        staged = path.with_name(f"new-{round_number}")
        staged.write_bytes(other)
        os.replace(staged, path)

        assert known_sha256(path) in (None, sha256(other))


# --- fetch against a local server ----------------------------------------------


def serve_gzip(body: bytes) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    encoded = gzip.compress(body)

    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Encoding", "gzip")
        request.send_header("Content-Length", str(len(encoded)))
        request.end_headers()
        request.wfile.write(encoded)

    return handle


def serve_cut_chunked(request: http.server.BaseHTTPRequestHandler) -> None:
    request.send_response(200)
    request.send_header("Transfer-Encoding", "chunked")
    request.end_headers()
    request.wfile.write(b"3e8\r\n" + b"a" * 1000 + b"\r\n")
    # The second chunk announces 1000 bytes and the connection closes after 300.
    request.wfile.write(b"3e8\r\n" + b"a" * 300)
    request.wfile.flush()
    request.close_connection = True
    request.connection.shutdown(socket.SHUT_RDWR)


def test_fetch_of_gzip_body_stores_decoded_bytes(tmp_path: Path, no_leftover_threads: None) -> None:
    body = b"step 100 loss 0.25\n" * 50_000
    with LocalServer({"/log.txt": serve_gzip(body)}) as server, requests.Session() as session:
        fetched = fetch(session, f"{server.url}/log.txt", tmp_path / "log.txt", name="log.txt")

    assert (tmp_path / "log.txt").read_bytes() == body
    assert fetched.size == len(body)
    assert fetched.sha256 == sha256(body)


def serve_cut_gzip(body: bytes) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    encoded = gzip.compress(body)

    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Encoding", "gzip")
        request.send_header("Content-Length", str(len(encoded)))
        request.end_headers()
        request.wfile.write(encoded[: len(encoded) // 2])
        request.wfile.flush()
        request.close_connection = True
        request.connection.shutdown(socket.SHUT_RDWR)

    return handle


def test_fetch_of_cut_gzip_body_is_retryable(tmp_path: Path, no_leftover_threads: None) -> None:
    body = os.urandom(200_000)
    with (
        LocalServer({"/log.txt": serve_cut_gzip(body)}) as server,
        requests.Session() as session,
        pytest.raises(requests.RequestException) as raised,
    ):
        fetch(session, f"{server.url}/log.txt", tmp_path / "log.txt", name="log.txt")

    assert isinstance(client.translate(raised.value, "download output"), KaggleUnavailableError)
    assert not (tmp_path / "log.txt").exists()
    assert temporaries(tmp_path) == []


def test_fetch_of_cut_chunked_body_is_retryable(tmp_path: Path, no_leftover_threads: None) -> None:
    with (
        LocalServer({"/ckpt.pt": serve_cut_chunked}) as server,
        requests.Session() as session,
        pytest.raises(requests.ConnectionError),
    ):
        fetch(session, f"{server.url}/ckpt.pt", tmp_path / "ckpt.pt", name="ckpt.pt")

    assert not (tmp_path / "ckpt.pt").exists()
    assert temporaries(tmp_path) == []


# --- uploads ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3, MIB - 1, MIB, MIB + 1, 2 * MIB + 3])
def test_upload_stopped_midway_resumes_at_odd_size(
    relay_api: Any, emulator: Any, tmp_path: Path, size: int, no_leftover_threads: None
) -> None:
    from tests.relay.test_upload import folder_with, publish, published_bytes

    data = os.urandom(size)
    folder = folder_with(tmp_path / "stage", data)
    uploader = upload.install(relay_api)
    uploader.expect(folder / "weights.bin", sha256(data))
    emulator.faults.inject("upload", "upload-stop", times=2)
    emulator.faults.inject("upload", "503", retry_after=0.01)

    created = publish(relay_api, folder)

    assert published_bytes(emulator, created) == data
    assert uploader.sent[os.path.abspath(folder / "weights.bin")] == sha256(data)


def complete_probe(request: http.server.BaseHTTPRequestHandler) -> None:
    request.rfile.read(int(request.headers.get("Content-Length") or 0))
    request.send_response(200)
    request.send_header("Content-Length", "0")
    request.end_headers()


def test_upload_probe_saying_complete_still_checks_bytes(tmp_path: Path, no_leftover_threads: None) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(MIB + 1))
    uploader = upload.StreamingUploader(timeout=(5.0, 5.0))
    uploader.expect(path, sha256(b"what the manifest recorded"))

    with LocalServer({"/blob": complete_probe}) as server, pytest.raises(CheckpointInvalidError):
        uploader.upload_complete(str(path), f"{server.url}/blob", quiet=True, resume=True)


def probe_past_end(size: int) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        request.rfile.read(int(request.headers.get("Content-Length") or 0))
        request.send_response(308)
        # The server claims 100 bytes more than the file has.
        request.send_header("Range", f"bytes=0-{size + 99}")
        request.send_header("Content-Length", "0")
        request.end_headers()

    return handle


def test_upload_probe_past_file_end_leaves_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(500))
    uploader = upload.StreamingUploader(timeout=(5.0, 5.0))
    before = data_path_threads()

    with LocalServer({"/blob": probe_past_end(500)}) as server:
        result = uploader.upload_complete(str(path), f"{server.url}/blob", quiet=True, resume=True)

    assert result != upload.COMPLETE
    assert new_thread_names(before) == []


# --- the CLI's stdout under faults ------------------------------------------------


@pytest.mark.slow
def test_next_day_json_stays_clean_under_faults(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    faults = short_emulator.faults
    finish(next_day_process(project))
    wait_until(
        lambda: short_emulator.kernels.version(KERNEL, 1)["status"] == "COMPLETE", what="version 1 to complete"
    )
    for kind in ("truncate", "expire", "drop", "500"):
        faults.inject("download", kind)
    faults.inject("upload", "upload-stop")
    faults.inject("upload", "503", retry_after=0.01)

    process = next_day_process(project, "--wait")
    out, err = process.communicate(timeout=120)

    assert faults.pending() == []
    assert process.returncode == 0, err
    result = json.loads(out)
    assert result["chains"][0]["name"] == "digits"
    # Nothing but the JSON object: the kaggle client's own prints go to the log, not to stdout.
    assert out.strip().startswith("{")
    assert out.strip().endswith("}")
    assert "Upload successful" not in out
    assert "Starting upload" not in out
