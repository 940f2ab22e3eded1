"""The relay's streaming upload PUT, through the real kaggle client's upload flow, against the emulator."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.errors import CheckpointInvalidError, EndpointSeamError
from kaggle_relay.relay import datasets, upload
from kaggle_relay.relay.refs import DatasetRef
from tests.relay import emulated
from tests.relay.emulated import USER

relay_api = emulated.relay_api
REF = DatasetRef(USER, "upload-checks")


def folder_with(root: Path, data: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "weights.bin").write_bytes(data)
    return root


def publish(api: Any, folder: Path) -> DatasetRef:
    return datasets.publish_folder(api, REF, folder, title="Upload Checks", notes="day one", marker="run-upload")


def published_bytes(emulator: Any, ref: DatasetRef) -> bytes:
    entries = {entry["name"]: entry for entry in emulator.datasets.files_of(ref.id, ref.require_version())}
    return emulator.store.resolve(entries["weights.bin"]["path"]).read_bytes()


def payload(size: int) -> bytes:
    return os.urandom(size)


def test_relay_client_uses_streaming_uploader(relay_api: Any) -> None:
    uploader = upload.install(relay_api)

    assert relay_api.upload_complete == uploader.upload_complete
    assert upload.install(relay_api) is uploader


def test_upload_records_sent_sha256(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    data = payload(3 << 20)
    folder = folder_with(tmp_path / "stage", data)

    created = publish(relay_api, folder)

    digest = upload.install(relay_api).sent[os.path.abspath(folder / "weights.bin")]
    assert digest == hashlib.sha256(data).hexdigest()
    assert published_bytes(emulator, created) == data


@pytest.mark.parametrize("kind", ["upload-stop", "503", "429", "drop"])
def test_interrupted_upload_resumes_whole(relay_api: Any, emulator: Any, tmp_path: Path, kind: str) -> None:
    data = payload(3 << 20)
    folder = folder_with(tmp_path / "stage", data)
    uploader = upload.install(relay_api)
    uploader.expect(folder / "weights.bin", hashlib.sha256(data).hexdigest())
    emulator.faults.inject("upload", kind, retry_after=0.05 if kind == "429" else None)

    created = publish(relay_api, folder)

    assert emulator.faults.pending() == []
    assert published_bytes(emulator, created) == data
    # A resumed upload hashes the part sent before from disk, so the whole file is still checked.
    assert uploader.sent[os.path.abspath(folder / "weights.bin")] == hashlib.sha256(data).hexdigest()


def test_upload_mismatching_manifest_creates_no_version(
    relay_api: Any, emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(1 << 20)
    folder = folder_with(tmp_path / "stage", data)
    upload.install(relay_api).expect(folder / "weights.bin", hashlib.sha256(b"what the manifest recorded").hexdigest())

    with caplog.at_level(logging.ERROR, logger="kaggle_relay.relay.upload"), pytest.raises(CheckpointInvalidError, match="changed on disk"):
        publish(relay_api, folder)

    assert "refusing weights.bin" in caplog.text
    assert not datasets.dataset_exists(relay_api, REF)


def test_upload_timeout_resumes(
    relay_api: Any, emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(1 << 20)
    folder = folder_with(tmp_path / "stage", data)
    upload.install(relay_api).timeout = (5.0, 0.3)
    emulator.faults.inject("upload", "slow", seconds=1.0)

    with caplog.at_level(logging.WARNING, logger="kaggle_relay.relay.upload"):
        created = publish(relay_api, folder)

    assert "broke off" in caplog.text
    assert published_bytes(emulator, created) == data


def test_seam_check_names_changed_method() -> None:
    class Moved:
        def upload_complete(self, path: str, url: str) -> None:
            return None

        def _upload_blob(self) -> None:
            self.upload_complete("", "")

    with pytest.raises(EndpointSeamError, match="upload_complete now takes"):
        upload.check_seam(Moved)


def test_seam_check_accepts_installed_client() -> None:
    from kaggle_relay.relay.endpoint import load_kaggle_api_class

    upload.check_seam(load_kaggle_api_class())


def test_upload_rehashes_rewritten_file(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    from kaggle_relay.runtime.validate import remember_sha256

    old = payload(1 << 20)
    folder = folder_with(tmp_path / "stage", old)
    path = folder / "weights.bin"
    remember_sha256(path, hashlib.sha256(old).hexdigest())
    upload.install(relay_api).expect(path, hashlib.sha256(old).hexdigest())
    stat = path.stat()
    path.write_bytes(payload(1 << 20))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    with pytest.raises(CheckpointInvalidError, match="changed on disk"):
        publish(relay_api, folder)


def test_upload_trusts_unchanged_download_hash(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    from kaggle_relay.runtime.validate import remember_sha256

    data = payload(1 << 20)
    folder = folder_with(tmp_path / "stage", data)
    path = folder / "weights.bin"
    # A digest the bytes do not have: if the uploader hashed the file, the upload would be rejected.
    recorded = hashlib.sha256(b"recorded during the download").hexdigest()
    remember_sha256(path, recorded)
    upload.install(relay_api).expect(path, recorded)

    created = publish(relay_api, folder)

    assert upload.install(relay_api).sent[os.path.abspath(path)] == recorded
    assert published_bytes(emulator, created) == data


def test_upload_progress_goes_to_stderr(
    relay_api: Any, emulator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with(tmp_path / "stage", payload(2 << 20))

    datasets.publish_folder(
        relay_api, REF, folder, title="Upload Checks", notes="day one", marker="run-progress", progress=True
    )

    captured = capsys.readouterr()
    assert "upload weights.bin" in captured.err
    assert captured.out == ""


def test_expired_upload_session_restarts_from_scratch(
    relay_api: Any, emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(3 << 20)
    folder = folder_with(tmp_path / "stage", data)
    emulator.faults.inject("upload", "upload-stop")
    emulator.faults.inject("upload", "expire")

    with caplog.at_level(logging.INFO, logger="kaggle_relay.relay.upload"):
        created = publish(relay_api, folder)

    assert "upload session expired" in caplog.text
    assert emulator.faults.pending() == []
    assert published_bytes(emulator, created) == data


def test_probe_covering_whole_file_completes_upload(tmp_path: Path) -> None:
    import http.server
    import threading

    data = payload(500)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)

    class Covering(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(308)
            self.send_header("Range", f"bytes=0-{len(data) - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Covering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uploader = upload.StreamingUploader(timeout=(5.0, 5.0))
        uploader.expect(path, hashlib.sha256(data).hexdigest())
        result = uploader.upload_complete(str(path), f"http://127.0.0.1:{server.server_address[1]}/blob", True, resume=True)
    finally:
        server.shutdown()
        server.server_close()

    assert result == upload.COMPLETE
    assert uploader.sent[os.path.abspath(path)] == hashlib.sha256(data).hexdigest()
