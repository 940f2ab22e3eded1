"""The error translation of ``client.call``, against real HTTP responses.

A small loopback server responds with chosen status codes and bodies, and
the kagglesdk HTTP client (the one KaggleApi uses) sends the requests, so
the exceptions translated here are the ones the client really raises.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kagglesdk.kaggle_env import KaggleEnv
from kagglesdk.kaggle_http_client import KaggleHttpClient
from kagglesdk.kernels.types.kernels_api_service import (
    ApiGetKernelSessionStatusRequest,
    ApiGetKernelSessionStatusResponse,
    ApiSaveKernelRequest,
    ApiSaveKernelResponse,
)

from kaggle_relay.errors import (
    DatasetProcessingError,
    KaggleAuthError,
    KaggleNotFoundError,
    KaggleRateLimitError,
    KaggleRejectedError,
    KaggleUnavailableError,
)
from kaggle_relay.relay import client

SECRET_KEY = "0123456789abcdef0123456789abcdef"

# path -> (status, headers, body, delay seconds)
ANSWERS: dict[str, tuple[int, dict[str, str], Any, float]] = {
    "GetKernelSessionStatus": (200, {}, {"status": "RUNNING"}, 0.0),
}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        method = self.path.rsplit("/", 1)[-1]
        status, headers, body, delay = ANSWERS[method]
        if delay:
            time.sleep(delay)
        if body == "echo-auth":
            body = {"code": 401, "message": f"bad header {self.headers.get('Authorization')}"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def http_client(endpoint: str) -> KaggleHttpClient:
    http = KaggleHttpClient(env=KaggleEnv.LOCAL, username="alice", password=SECRET_KEY)
    http._endpoint = endpoint
    return http


def status_call(endpoint: str) -> ApiGetKernelSessionStatusResponse:
    request = ApiGetKernelSessionStatusRequest()
    request.user_name = "alice"
    request.kernel_slug = "train-digits"
    return http_client(endpoint).call(
        "kernels.KernelsApiService", "GetKernelSessionStatus", request, ApiGetKernelSessionStatusResponse
    )


def answer(status: int, body: Any, headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
    ANSWERS["GetKernelSessionStatus"] = (status, headers or {}, body, delay)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, KaggleRejectedError),
        (401, KaggleAuthError),
        (403, KaggleAuthError),
        (404, KaggleNotFoundError),
        (409, KaggleRejectedError),
        (408, KaggleUnavailableError),
        (500, KaggleUnavailableError),
        (503, KaggleUnavailableError),
    ],
)
def test_status_code_becomes_typed_error(server: str, status: int, error_type: type[Exception]) -> None:
    answer(status, {"message": "nope"})
    with pytest.raises(error_type) as caught:
        client.call("GetKernelSessionStatus", status_call, server, resource="alice/train-digits/3")
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert caught.value.call == "GetKernelSessionStatus"  # type: ignore[attr-defined]
    assert "alice/train-digits/3" in str(caught.value)


def test_forbidden_while_processing_is_not_an_auth_error(server: str) -> None:
    answer(403, {"message": "dataset is being processed"})
    with pytest.raises(DatasetProcessingError):
        client.call("CreateDatasetVersion", status_call, server, forbidden_means_processing=True)


def test_rate_limit_carries_retry_after(server: str) -> None:
    answer(429, {"message": "slow down"}, {"Retry-After": "3"})
    with pytest.raises(KaggleRateLimitError) as caught:
        client.call("GetKernelSessionStatus", status_call, server)
    assert caught.value.retry_after == 3.0


def test_json_code_wins_over_http_200(server: str) -> None:
    answer(200, {"code": 404, "message": "kernel not found"})
    with pytest.raises(KaggleNotFoundError, match="kernel not found") as caught:
        client.call("GetKernelSessionStatus", status_call, server)
    assert caught.value.status == 404


def test_answer_with_error_field_is_rejected(server: str) -> None:
    ANSWERS["SaveKernel"] = (200, {}, {"error": "Notebook title is invalid", "versionNumber": 0}, 0.0)

    def push() -> ApiSaveKernelResponse:
        request = ApiSaveKernelRequest()
        request.slug = "alice/train-digits"
        return http_client(server).call("kernels.KernelsApiService", "SaveKernel", request, ApiSaveKernelResponse)

    with pytest.raises(KaggleRejectedError, match="Notebook title is invalid"):
        client.call("SaveKernel", push)


def test_successful_answer_passes_through(server: str) -> None:
    answer(200, {"status": "COMPLETE"})
    result = client.call("GetKernelSessionStatus", status_call, server)
    assert result.status.name == "COMPLETE"


def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(KaggleUnavailableError, match="connection"):
        client.call("GetKernelSessionStatus", status_call, f"http://127.0.0.1:{port}")


def test_error_message_masks_credentials(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    answer(200, "echo-auth")
    with pytest.raises(KaggleAuthError) as caught:
        client.call("GetKernelSessionStatus", status_call, server)
    assert "Basic" in str(caught.value)
    assert "YWxpY2U6" not in str(caught.value)


def test_client_stdout_is_captured(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    def noisy() -> str:
        print("Warning: Looks like you're using an outdated API Version")
        return "done"

    assert client.call("noisy", noisy) == "done"
    assert capsys.readouterr().out == ""


def test_client_validation_error_is_rejected() -> None:
    def validate() -> None:
        raise ValueError("Title must be at least five characters")

    with pytest.raises(KaggleRejectedError, match="five characters"):
        client.call("SaveKernel", validate, resource="alice/train-digits")


def test_upload_failure_is_unavailable() -> None:
    def upload() -> None:
        raise ValueError("Upload unsuccessful: ckpt.pt")

    with pytest.raises(KaggleUnavailableError, match="ckpt.pt"):
        client.call("CreateDatasetVersion", upload)


# --- connect (emulator) ----------------------------------------------------------


def test_connect_without_credentials_imports_nothing() -> None:
    import subprocess
    import sys

    script = (
        "import sys, json\n"
        "from kaggle_relay.errors import CredentialsError\n"
        "from kaggle_relay.relay import client\n"
        "try:\n"
        "    client.connect()\n"
        "except CredentialsError as error:\n"
        "    print(json.dumps({'error': str(error), 'imported': 'kaggle' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    data = json.loads(result.stdout)
    assert data["imported"] is False
    assert "KAGGLE_API_TOKEN" in data["error"]
    assert result.stderr == ""


def test_connect_with_token_authenticates(emulator: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import EMULATOR_TOKEN, EMULATOR_USER

    monkeypatch.setenv("KAGGLE_API_TOKEN", EMULATOR_TOKEN)
    monkeypatch.setenv("KAGGLE_RELAY_API_ENDPOINT", emulator.url)
    client.forget_clients()
    try:
        api = client.connect()
        assert client.username(api) == EMULATOR_USER
        assert client.connect() is api
    finally:
        client.forget_clients()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert EMULATOR_TOKEN not in captured.err


def test_connect_with_rejected_token_is_credentials_error(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kaggle_relay.errors import CredentialsError

    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_not-a-token-the-server-knows")
    monkeypatch.setenv("KAGGLE_RELAY_API_ENDPOINT", emulator.url)
    client.forget_clients()
    try:
        with pytest.raises(CredentialsError, match="did not accept"):
            client.connect()
    finally:
        client.forget_clients()


def test_crossed_stdout_captures_restore_stdout() -> None:
    import io
    import sys

    original = sys.stdout
    first, second = io.StringIO(), io.StringIO()
    first_in, second_in, main_done, first_out = (threading.Event() for _ in range(4))

    def first_thread() -> None:
        with client.capture_stdout(first):
            first_in.set()
            main_done.wait(5)
            print("from the first thread")
        first_out.set()

    def second_thread() -> None:
        first_in.wait(5)
        with client.capture_stdout(second):
            second_in.set()
            first_out.wait(5)
            print("from the second thread")

    threads = [threading.Thread(target=first_thread), threading.Thread(target=second_thread)]
    for thread in threads:
        thread.start()
    # Both captures are open now, and stay open until main_done.
    second_in.wait(5)
    main_line = io.StringIO()
    sys.stdout.fallback, saved = main_line, sys.stdout.fallback  # type: ignore[attr-defined]
    print("from the main thread")
    sys.stdout.fallback = saved  # type: ignore[attr-defined]
    main_done.set()
    for thread in threads:
        thread.join(5)

    assert sys.stdout is original
    assert first.getvalue() == "from the first thread\n"
    assert second.getvalue() == "from the second thread\n"
    assert main_line.getvalue() == "from the main thread\n"
