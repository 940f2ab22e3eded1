"""The one door to Kaggle: an authenticated ``KaggleApi`` and ``call``.

``connect`` checks credentials before it imports the ``kaggle`` package,
whose import authenticates and prints help. It points the client at the
endpoint chosen by ``relay/endpoint.py`` and puts a per-request timeout on
every HTTP session the client opens. It authenticates once per process and
endpoint.

``call`` runs one KaggleApi method and turns every way it can fail into the
typed errors of ``kaggle_relay.errors``: HTTP status codes, JSON bodies with
``"code" >= 400``, 200 responses that carry an ``error`` field, dropped
connections and timeouts. Nothing else in the relay reads a status code.

Known gap: the client uploads dataset files through its own
``requests.Session`` objects, created inside ``upload_complete``, so upload
PUTs run without the per-request timeout. The upload retry policy bounds the
number of attempts, not the time a hung PUT can take.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from kaggle_relay.errors import (
    CredentialsError,
    DatasetProcessingError,
    KaggleApiError,
    KaggleAuthError,
    KaggleNotFoundError,
    KaggleRateLimitError,
    KaggleRejectedError,
    KaggleUnavailableError,
    RelayError,
)
from kaggle_relay.relay import credentials, upload

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds to wait for a connection, and between two bytes of a response.
DEFAULT_TIMEOUT = (10.0, 120.0)

_clients: dict[str, KaggleApi] = {}


# --- connecting --------------------------------------------------------------


def connect(*, endpoint: str | None = None, timeout: float | tuple[float, float] | None = None) -> KaggleApi:
    """Return the authenticated client for ``endpoint`` (the seam's choice when None).

    Raises CredentialsError before anything is imported when no credentials
    exist, and when Kaggle (or the emulator) does not accept them.
    """
    found = credentials.find_credentials()
    from kaggle_relay.relay import endpoint as seam

    chosen = seam.resolve_endpoint(endpoint)
    key = chosen or ""
    api = _clients.get(key)
    if api is None:
        api = _new_client(found, chosen)
        _clients[key] = api
    if timeout is not None:
        set_timeout(api, timeout)
    return api


def forget_clients() -> None:
    """Drop the cached clients, so the next ``connect`` authenticates again."""
    _clients.clear()


def username(api: KaggleApi) -> str:
    """Return the user the client authenticated as."""
    return str(api.config_values.get("username") or "")


def set_timeout(api: KaggleApi, timeout: float | tuple[float, float]) -> None:
    """Set the per-request timeout of every HTTP session the client opens from now on."""
    api._relay_timeout = timeout  # type: ignore[attr-defined]


def _new_client(found: credentials.Credentials, chosen: str | None) -> KaggleApi:
    from kaggle_relay.relay import endpoint as seam

    # The seam imports the client without running ``kaggle/__init__.py``, whose
    # import-time login prints help to stdout or sends a token to production.
    with capture_stdout(io.StringIO()):
        api: KaggleApi = seam.create_api(chosen)
    # The class computed its config path when it was imported; use the current one.
    api.config_dir = str(credentials.config_dir())
    api.config = os.path.join(api.config_dir, "kaggle.json")
    _install_timeout(api)
    upload.install(api)
    if found.token_file:
        # The client reads access_token files only from ~/.kaggle, but accepts a path here.
        os.environ["KAGGLE_API_TOKEN"] = found.token_file
    call("authenticate", _authenticate, api, found)
    log.debug("authenticated as %s with %s", username(api), found.source)
    return api


def _authenticate(api: KaggleApi, found: credentials.Credentials) -> None:
    try:
        api.authenticate()
    except SystemExit:
        # authenticate() calls exit(1) when no method worked, e.g. a token the server rejects.
        raise CredentialsError(
            f"Kaggle did not accept the credentials from {found.source}",
            hint="create a new API token on kaggle.com (Settings, API) and store it as before",
        ) from None


# --- per-request timeout -----------------------------------------------------


class _TimeoutAdapter(HTTPAdapter):
    """An adapter that gives every request without a timeout the client's timeout."""

    def __init__(self, api: KaggleApi) -> None:
        super().__init__()
        self._api = api

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = getattr(self._api, "_relay_timeout", DEFAULT_TIMEOUT)
        return super().send(request, **kwargs)


def _install_timeout(api: KaggleApi) -> None:
    """Wrap ``build_kaggle_client`` so each new client's session carries the timeout.

    The client builds a new KaggleClient, with a new ``requests.Session``, for
    every API call, and sends without a timeout: a socket that never responds
    would hang the relay forever.
    """
    build = api.build_kaggle_client

    def build_with_timeout() -> Any:
        kaggle_client = build()
        http_client = kaggle_client.http_client()
        http_client._init_session()
        adapter = _TimeoutAdapter(api)
        http_client._session.mount("http://", adapter)
        http_client._session.mount("https://", adapter)
        return kaggle_client

    api.build_kaggle_client = build_with_timeout  # type: ignore[method-assign]


def http_session(api: KaggleApi) -> requests.Session:
    """Return a session of the kaggle client, with the relay's timeout, for plain GETs.

    Send prepared requests through ``session.send``: unlike ``session.get`` it
    does not attach the session's Kaggle credentials, which must never go to
    a signed download URL.
    """
    session: requests.Session = api.build_kaggle_client().http_client()._session
    return session


# --- calling and translating -------------------------------------------------


def call(
    what: str,
    fn: Callable[..., T],
    *args: Any,
    resource: str = "",
    forbidden_means_processing: bool = False,
    **kwargs: Any,
) -> T:
    """Run ``fn(*args, **kwargs)`` (a KaggleApi method) and translate its failures.

    ``what`` names the call in messages and logs; ``resource`` names the
    kernel or dataset. With ``forbidden_means_processing``, an HTTP 403 is a
    DatasetProcessingError (a new version while the last one is processed)
    instead of an authentication error. The client's stdout is captured and
    logged at DEBUG with secrets masked, so ``--json`` output stays clean.
    """
    captured = io.StringIO()
    try:
        with capture_stdout(captured):
            result = fn(*args, **kwargs)
    except RelayError:
        raise
    except (requests.RequestException, ValueError, OSError, SystemExit) as exc:
        raise translate(exc, what, resource, forbidden_means_processing) from exc
    finally:
        _log_captured(what, captured.getvalue())
    check_error_field(result, what, resource)
    return result


class _ThreadStdout(io.TextIOBase):
    """``sys.stdout`` while some thread captures the client's prints: each thread writes to its own target.

    ``contextlib.redirect_stdout`` swaps one process-wide object. When two
    threads enter and leave it in crossed order, ``sys.stdout`` is left
    pointing at a finished capture, so every later line of the program is lost.
    """

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self.local = threading.local()

    def _target(self) -> Any:
        return getattr(self.local, "buffer", None) or self.fallback

    def write(self, text: str) -> int:
        return int(self._target().write(text) or len(text))

    def flush(self) -> None:
        self._target().flush()


_stdout_lock = threading.Lock()
_stdout_users = 0


@contextlib.contextmanager
def capture_stdout(buffer: io.StringIO) -> Iterator[None]:
    """Send what this thread prints to ``buffer``; other threads keep printing where they did."""
    global _stdout_users
    with _stdout_lock:
        if not isinstance(sys.stdout, _ThreadStdout):
            sys.stdout = _ThreadStdout(sys.stdout)
        proxy = sys.stdout
        _stdout_users += 1
    previous = getattr(proxy.local, "buffer", None)
    proxy.local.buffer = buffer
    try:
        yield
    finally:
        proxy.local.buffer = previous
        with _stdout_lock:
            _stdout_users -= 1
            if _stdout_users == 0 and sys.stdout is proxy:
                sys.stdout = proxy.fallback


def _log_captured(what: str, text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            log.debug("%s: kaggle client: %s", what, credentials.mask(line))


def translate(
    exc: BaseException, what: str, resource: str = "", forbidden_means_processing: bool = False
) -> KaggleApiError:
    """Return the typed error for an exception raised inside the kaggle client."""
    where = f" for {resource}" if resource else ""
    if isinstance(exc, requests.HTTPError):
        return _from_http_error(exc, what, resource, forbidden_means_processing)
    if isinstance(exc, requests.Timeout):
        return KaggleUnavailableError(
            f"{what}{where} timed out: {_text(exc)}",
            call=what,
            resource=resource,
            hint="Kaggle did not answer in time; the next run tries again",
        )
    if isinstance(exc, requests.RequestException | OSError) and _is_connection_error(exc):
        return KaggleUnavailableError(
            f"{what}{where} failed: connection error: {_text(exc)}",
            call=what,
            resource=resource,
            hint="check the network; the next run tries again",
        )
    if isinstance(exc, requests.exceptions.InvalidJSONError):
        return KaggleUnavailableError(
            f"{what}{where} returned a response that is not JSON: {_text(exc)}", call=what, resource=resource
        )
    if isinstance(exc, ValueError):
        return _from_value_error(exc, what, resource, forbidden_means_processing)
    if isinstance(exc, SystemExit):
        return KaggleApiError(f"{what}{where}: the kaggle client exited with {exc.code}", call=what, resource=resource)
    if isinstance(exc, requests.RequestException):
        return KaggleUnavailableError(f"{what}{where} failed: {_text(exc)}", call=what, resource=resource)
    raise exc


def _is_connection_error(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(
        exc, requests.ConnectionError | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError
    )


def _from_value_error(
    exc: ValueError, what: str, resource: str, forbidden_means_processing: bool
) -> KaggleApiError:
    # The client turns some HTTP errors into ValueError (a 401/403 on kernel
    # status or output); the original error is still attached as context.
    context = exc.__context__
    if isinstance(context, requests.HTTPError):
        return _from_http_error(context, what, resource, forbidden_means_processing)
    where = f" for {resource}" if resource else ""
    message = _text(exc)
    if message.startswith("Upload unsuccessful"):
        return KaggleUnavailableError(
            f"{what}{where} failed: {message}", call=what, resource=resource, hint="the next run tries again"
        )
    return KaggleRejectedError(f"{what}{where} was rejected by the kaggle client: {message}", call=what, resource=resource)


def _from_http_error(
    exc: requests.HTTPError, what: str, resource: str, forbidden_means_processing: bool
) -> KaggleApiError:
    response = exc.response
    status, detail = _status_and_detail(exc, response)
    where = f" for {resource}" if resource else ""
    message = f"{what}{where} failed with HTTP {status}: {detail}"
    kwargs: dict[str, Any] = {"status": status, "call": what, "resource": resource}
    if status == 429:
        retry_after = _retry_after(response)
        return KaggleRateLimitError(message, retry_after=retry_after, hint="Kaggle rate limit; wait and run again", **kwargs)
    if status == 403 and forbidden_means_processing:
        return DatasetProcessingError(message + " (the previous version is still processing)", **kwargs)
    if status in (401, 403):
        return KaggleAuthError(message, **kwargs)
    if status == 404:
        return KaggleNotFoundError(message, hint=f"check that {resource or 'the resource'} exists and is yours", **kwargs)
    if status == 408 or (status is not None and status >= 500):
        return KaggleUnavailableError(message, hint="Kaggle is unavailable; the next run tries again", **kwargs)
    if status is not None and 400 <= status < 500:
        return KaggleRejectedError(message, **kwargs)
    return KaggleApiError(message, **kwargs)


def _status_and_detail(exc: requests.HTTPError, response: requests.Response | None) -> tuple[int | None, str]:
    if response is None:
        return None, _text(exc)
    status: int | None = response.status_code
    detail = _text(exc)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # A JSON body with "code" >= 400 is an error whatever the HTTP status was.
        code = body.get("code")
        if isinstance(code, int) and code >= 400:
            status = code
        server_message = body.get("message") or body.get("error")
        if isinstance(server_message, str) and server_message:
            detail = server_message
    return status, credentials.mask(detail)[:500]


def _retry_after(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import datetime as dt

    return max(0.0, (moment - dt.datetime.now(dt.timezone.utc)).total_seconds())


def check_error_field(result: object, what: str, resource: str = "") -> None:
    """Raise KaggleRejectedError for a successful HTTP response that carries an error."""
    where = f" for {resource}" if resource else ""
    for name in ("error", "error_message"):
        value = getattr(result, name, None)
        if isinstance(value, str) and value.strip():
            raise KaggleRejectedError(
                f"{what}{where} was rejected by Kaggle: {credentials.mask(value)}", call=what, resource=resource
            )
    status = getattr(result, "status", None)
    if isinstance(status, str) and status.lower() == "error":
        raise KaggleRejectedError(f"{what}{where} was rejected by Kaggle (status 'error')", call=what, resource=resource)


def _text(exc: BaseException) -> str:
    return credentials.mask(str(exc) or type(exc).__name__)


__all__ = [
    "DEFAULT_TIMEOUT",
    "call",
    "check_error_field",
    "connect",
    "forget_clients",
    "http_session",
    "set_timeout",
    "translate",
    "username",
]
