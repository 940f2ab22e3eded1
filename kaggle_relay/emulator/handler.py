"""HTTP request handling of the emulator: routing, authentication, faults, file transfers.

Routes:

- ``POST /api/v1/<service>/<Method>``: the kagglesdk RPCs (JSON in, JSON out);
- ``PUT /_emulator/uploads/<token>``: resumable blob uploads;
- ``GET /_emulator/files/...``: downloads without auth, with ``Range``/206;
- ``/_emulator/faults``, ``/_emulator/outputs``, ``/_emulator/health``: admin.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from kaggle_relay.emulator.faults import Fault
from kaggle_relay.emulator.protocol import ApiError, http_date

if TYPE_CHECKING:
    from kaggle_relay.emulator.server import Emulator

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RPC_PREFIX = "/api/v1/"
ADMIN_PREFIX = "/_emulator/"
NO_AUTH_METHODS = frozenset({"IntrospectToken"})
#: Folder under the data dir from which ``POST /_emulator/outputs`` may take a file by name.
IMPORTS_FOLDER = "imports"


def rpc_table(emulator: Emulator) -> dict[str, Callable[[str, dict[str, Any]], Any]]:
    kernels, datasets = emulator.kernels, emulator.datasets
    return {
        "SaveKernel": kernels.save_kernel,
        "GetKernelSessionStatus": kernels.get_kernel_session_status,
        "ListKernelSessionOutput": kernels.list_kernel_session_output,
        "GetKernel": kernels.get_kernel,
        "StartBlobUpload": emulator.uploads.start_blob_upload,
        "CreateDataset": datasets.create_dataset,
        "CreateDatasetVersion": datasets.create_dataset_version,
        "CreateDatasetVersionById": datasets.create_dataset_version_by_id,
        "GetDatasetStatus": datasets.get_dataset_status,
        "GetDataset": datasets.get_dataset,
        "ListDatasetFiles": datasets.list_dataset_files,
        "GetDatasetMetadata": datasets.get_dataset_metadata,
        "DownloadDataset": datasets.download_dataset,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kaggle-relay-emulator"

    @property
    def emulator(self) -> Emulator:
        emulator: Emulator = self.server.emulator  # type: ignore[attr-defined]
        return emulator

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # --- verbs --------------------------------------------------------------

    def do_POST(self) -> None:
        if self.path.startswith(RPC_PREFIX):
            self._guard(self._rpc)
        elif self.path.startswith(ADMIN_PREFIX):
            self._guard(self._admin)
        else:
            self._guard(self._not_found)

    def do_PUT(self) -> None:
        if self.path.startswith(ADMIN_PREFIX + "uploads/"):
            self._guard(self._upload)
        else:
            self._guard(self._not_found)

    def do_GET(self) -> None:
        if self.path.startswith(ADMIN_PREFIX + "files/"):
            self._guard(self._download)
        elif self.path.startswith(ADMIN_PREFIX):
            self._guard(self._admin)
        else:
            self._guard(self._not_found)

    def do_DELETE(self) -> None:
        self._guard(self._admin if self.path.startswith(ADMIN_PREFIX) else self._not_found)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except ApiError as error:
            self._send_json(
                error.status, {"code": error.status, "message": error.message}, error.headers
            )
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # respond 500 like a real server, and keep serving
            log.exception("emulator failed on %s %s", self.command, self.path)
            self._send_json(500, {"code": 500, "message": f"emulator error: {error}"})

    def _not_found(self) -> None:
        self._drain()
        raise ApiError(404, f"No route {self.command} {self.path}")

    # --- RPCs ---------------------------------------------------------------

    def _rpc(self) -> None:
        method = self.path[len(RPC_PREFIX) :].split("?")[0].split("/")[-1]
        raw = self._read_body()
        if self._apply_fault(method):
            return
        body = json.loads(raw or b"{}")
        if method == "IntrospectToken":
            self._send_json(200, self._introspect(body))
            return
        user = self._authenticate()
        handler = rpc_table(self.emulator).get(method)
        if handler is None:
            raise ApiError(404, f"The emulator does not serve {method}")
        answer = handler(user, body)
        if method == "DownloadDataset":
            self._send_redirect(answer)
        else:
            self._send_json(200, answer)

    def _authenticate(self) -> str:
        header = self.headers.get("Authorization", "")
        config = self.emulator.config
        scheme, _, value = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, key = base64.b64decode(value).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise ApiError(401, "Unauthenticated: malformed Basic credentials") from None
            if user in config.users and config.users[user] == key:
                return user
            raise ApiError(401, f"Unauthenticated: invalid API key for user {user!r}")
        if scheme == "Bearer":
            token_user = config.tokens.get(value.strip())
            if token_user is not None:
                return token_user
            raise ApiError(401, "Unauthenticated: the access token is invalid or expired")
        raise ApiError(401, "Unauthenticated: no credentials were sent")

    def _introspect(self, body: dict[str, Any]) -> dict[str, Any]:
        user = self.emulator.config.tokens.get(body.get("token", ""))
        if user is None:
            return {"active": False}
        return {"active": True, "username": user, "clientId": "kaggle-relay-emulator"}

    # --- uploads and downloads ---------------------------------------------

    def _upload(self) -> None:
        token = self.path[len(ADMIN_PREFIX + "uploads/") :].split("?")[0]
        fault = self.emulator.faults.take("upload")
        keep_half = fault is not None and fault.kind == "upload-stop"
        if fault is not None and not keep_half:
            self._drain()
            if fault.kind == "expire":
                self.emulator.uploads.forget(token)
                self._send_json(404, {"code": 404, "message": "upload session not found (injected fault)"})
                return
            if self._answer_fault(fault):
                return
        status, headers = self.emulator.uploads.put(
            token, self.headers.get("Content-Range"), self._stream_body(), keep_half
        )
        self._send_json(
            status, {} if status < 400 else {"code": status, "message": "upload rejected"}, headers
        )

    def _download(self) -> None:
        route = self.path[len(ADMIN_PREFIX + "files/") :].split("?")[0]
        fault = self.emulator.faults.take("download")
        truncate = fault is not None and fault.kind == "truncate"
        if fault is not None and not truncate:
            if fault.kind == "expire":
                self._send_text(403, "The signed URL has expired.")
                return
            if self._answer_fault(fault):
                return
        path = self.emulator.files.path_for(route)
        self._send_file(path, truncate)

    def _send_file(self, path: Any, truncate: bool) -> None:
        stat = path.stat()
        size = stat.st_size
        etag = f'"{size:x}-{int(stat.st_mtime * 1000):x}"'
        last_modified = http_date(stat.st_mtime)
        start, end = self._byte_range(size, etag, last_modified)
        status = 200 if (start, end) == (0, size - 1) or size == 0 else 206
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", last_modified)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        to_send = length // 2 if truncate else length
        pace = Pace(self.emulator.config.transfer_rate)
        with open(path, "rb") as handle:
            handle.seek(start)
            while to_send > 0:
                chunk = handle.read(min(CHUNK, to_send))
                if not chunk:
                    break
                self.wfile.write(chunk)
                to_send -= len(chunk)
                pace.wait(len(chunk))
        if truncate:
            self.wfile.flush()
            self._drop_connection()

    def _byte_range(self, size: int, etag: str, last_modified: str) -> tuple[int, int]:
        header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        whole = (0, size - 1)
        if not header or (if_range and if_range not in (etag, last_modified)):
            return whole
        if not header.startswith("bytes=") or "," in header:
            return whole
        first, _, last = header[len("bytes=") :].partition("-")
        if not first.isdigit():
            return whole
        start = int(first)
        end = min(int(last), size - 1) if last.isdigit() else size - 1
        if start >= size or start > end:
            raise ApiError(
                416, f"Range {header} not satisfiable", headers={"Content-Range": f"bytes */{size}"}
            )
        return start, end

    # --- admin --------------------------------------------------------------

    def _admin(self) -> None:
        route = self.path[len(ADMIN_PREFIX) :].split("?")[0].rstrip("/")
        raw = self._read_body()
        body = json.loads(raw) if raw else {}
        emulator = self.emulator
        if route == "health" and self.command == "GET":
            self._send_json(200, {"ok": True, "url": emulator.url})
        elif route == "faults" and self.command == "GET":
            self._send_json(200, {"faults": emulator.faults.pending()})
        elif route == "faults" and self.command == "DELETE":
            emulator.faults.clear()
            self._send_json(200, {})
        elif route == "faults" and self.command == "POST":
            self._send_json(200, {"fault": self._inject(body).to_dict()})
        elif route == "outputs" and self.command == "POST":
            self._add_output(body)
            self._send_json(200, {})
        else:
            raise ApiError(404, f"No admin route {self.command} /_emulator/{route}")

    def _inject(self, body: dict[str, Any]) -> Fault:
        try:
            return self.emulator.faults.inject(
                str(body["route"]),
                str(body["kind"]),
                times=int(body.get("times", 1)),
                retry_after=body.get("retry_after"),
                seconds=float(body.get("seconds", 1.0)),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ApiError(400, f"invalid fault {body!r}: {error}") from None

    def _add_output(self, body: dict[str, Any]) -> None:
        try:
            kernel, version, name = str(body["kernel"]), int(body["version"]), str(body["name"])
            if "file" in body:
                self.emulator.add_output_file(kernel, version, name, self._import_path(str(body["file"])))
                return
            if "content_base64" in body:
                data = base64.b64decode(body["content_base64"])
            else:
                data = str(body.get("content", "")).encode("utf-8")
        except (KeyError, ValueError, TypeError, binascii.Error) as error:
            raise ApiError(400, f"invalid output entry {body!r}: {error}") from None
        self.emulator.add_output(kernel, version, name, data)

    def _import_path(self, name: str) -> Any:
        """Resolve ``name`` inside ``<data>/imports``, the only folder the admin route reads files from."""
        folder = (self.emulator.data_dir / IMPORTS_FOLDER).resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise ApiError(400, f"no file {name!r} in {folder}")
        return path

    # --- faults -------------------------------------------------------------

    def _apply_fault(self, route: str) -> bool:
        """Apply the next fault for ``route``; return True when a response was sent."""
        fault = self.emulator.faults.take(route)
        return fault is not None and self._answer_fault(fault)

    def _answer_fault(self, fault: Fault) -> bool:
        log.info("injecting fault %s on %s", fault.kind, fault.route)
        if fault.kind == "slow":
            time.sleep(fault.seconds)
            return False
        if fault.kind == "drop":
            self._drop_connection()
            return True
        status = int(fault.kind)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        message = {429: "Too many requests", 500: "Internal error", 503: "Service unavailable"}[
            status
        ]
        self._send_json(status, {"code": status, "message": f"{message} (injected fault)"}, headers)
        return True

    def _drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- bodies and responses -------------------------------------------------

    def _body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            yield from self._chunked()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise ConnectionResetError("client closed the connection mid-body")
            remaining -= len(chunk)
            yield chunk

    def _chunked(self) -> Iterator[bytes]:
        while True:
            size_line = self.rfile.readline().strip().split(b";")[0]
            size = int(size_line or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def _stream_body(self) -> Iterator[memoryview]:
        """Yield the body in views of one reused buffer; each view is valid until the next one.

        Reading into one buffer spares an allocation per megabyte, which kept
        uploads at about a third of what loopback carries.
        """
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            for chunk in self._chunked():
                yield memoryview(chunk)
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        buffer = memoryview(bytearray(CHUNK))
        pace = Pace(self.emulator.config.transfer_rate)
        while remaining > 0:
            count = self.rfile.readinto(buffer[: min(CHUNK, remaining)])
            if not count:
                raise ConnectionResetError("client closed the connection mid-body")
            remaining -= count
            yield buffer[:count]
            pace.wait(count)

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _drain(self) -> None:
        for _ in self._body_chunks():
            pass

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Pace:
    """Hold a transfer to ``rate`` bytes per second (0: no limit), as a real link would."""

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.start = clock()
        self.moved = 0

    def wait(self, count: int) -> None:
        """Record ``count`` more bytes moved and sleep until the rate allows them."""
        if self.rate <= 0:
            return
        self.moved += count
        ahead = self.moved / self.rate - (self.clock() - self.start)
        if ahead > 0:
            self.sleep(ahead)
