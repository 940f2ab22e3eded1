"""Point a ``KaggleApi`` at another API endpoint, such as the local emulator.

kaggle 2.2.x chooses its endpoint from a fixed table (production, or
``http://localhost`` on port 80 when ``KAGGLE_API_ENVIRONMENT=LOCALHOST``), so
there is no supported way to reach a server on another port. This seam sets
the two attributes that kagglesdk 0.1.38 reads when it builds a request URL,
on the ``KaggleHttpClient`` that ``KaggleApi.build_kaggle_client`` creates:

- ``_endpoint``: the base URL (``https://api.kaggle.com`` in production);
- ``_env``: a ``KaggleEnv``; any value but ``PROD`` makes the client put
  ``/api`` before ``/v1``, which is where the emulator serves its routes.

Every RPC of ``KaggleApi`` goes through ``build_kaggle_client``, and the
remaining plain HTTP requests of the client (blob upload PUTs, output and
dataset downloads) go to URLs that the server returns, so both reach the
emulator. ``check_seam`` verifies that those internals still exist and
raises ``EndpointSeamError`` naming what moved if a newer kagglesdk changed
them.

``import kaggle`` authenticates at import time (and with an access token it
calls the production token check), so this module imports the ``kaggle``
package only inside functions, through ``load_kaggle_api_class``, which
loads ``kaggle.api.kaggle_api_extended`` without running the package's
``__init__``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from typing import Any

from kaggle_relay.errors import EndpointSeamError

ENV_VAR = "KAGGLE_RELAY_API_ENDPOINT"
"""Environment variable naming the API endpoint; it wins over the config value."""

_HTTP_CLIENT_ATTRIBUTES = ("_endpoint", "_env", "_get_request_url")


def resolve_endpoint(config_value: str | None = None) -> str | None:
    """Return the endpoint to use, or None for Kaggle's production endpoint.

    ``KAGGLE_RELAY_API_ENDPOINT`` wins over the ``endpoint`` config value. A
    trailing slash is removed, so ``http://127.0.0.1:8000/`` and
    ``http://127.0.0.1:8000`` are the same endpoint.
    """
    for value in (os.environ.get(ENV_VAR), config_value):
        if value and value.strip():
            endpoint = value.strip().rstrip("/")
            if not endpoint.startswith(("http://", "https://")):
                raise EndpointSeamError(
                    f"invalid Kaggle API endpoint {endpoint!r}: it must start with http:// or https://",
                    hint=f"set {ENV_VAR} or the config value 'endpoint' to a URL such as "
                    "http://127.0.0.1:8000",
                )
            return endpoint
    return None


def load_kaggle_api_class() -> type:
    """Import and return ``KaggleApi`` without running ``kaggle/__init__.py``.

    The package's ``__init__`` creates a ``KaggleApi`` and authenticates it at
    import time, which prints a long help text when credentials are missing
    and, with an access token, sends it to the production endpoint. When the
    package is not imported yet, this function registers an empty ``kaggle``
    package module (with its real search path and version) so that only the
    submodule is executed. An already imported ``kaggle`` is used as it is.
    """
    if "kaggle" not in sys.modules:
        spec = importlib.util.find_spec("kaggle")
        if spec is None or spec.submodule_search_locations is None:
            raise EndpointSeamError(
                "the 'kaggle' package is not installed",
                hint="install kaggle-relay's dependencies (pip install -e .)",
            )
        package = importlib.util.module_from_spec(spec)
        package.__version__ = _installed_kaggle_version()  # type: ignore[attr-defined]
        sys.modules["kaggle"] = package
    module = importlib.import_module("kaggle.api.kaggle_api_extended")
    api_class: type = module.KaggleApi
    return api_class


def _installed_kaggle_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kaggle")
    except PackageNotFoundError:
        return "0"


def check_seam() -> None:
    """Raise ``EndpointSeamError`` if kagglesdk lacks an internal this seam sets."""
    from kagglesdk import KaggleEnv  # type: ignore[attr-defined]
    from kagglesdk.kaggle_http_client import KaggleHttpClient

    api_class = load_kaggle_api_class()
    if not callable(getattr(api_class, "build_kaggle_client", None)):
        raise _moved("KaggleApi.build_kaggle_client")
    if not hasattr(KaggleEnv, "LOCAL") or not hasattr(KaggleEnv, "PROD"):
        raise _moved("kagglesdk.KaggleEnv.LOCAL")
    probe = KaggleHttpClient(env=KaggleEnv.PROD)
    _check_http_client(probe)


def _check_http_client(http_client: Any) -> None:
    for name in _HTTP_CLIENT_ATTRIBUTES:
        if not hasattr(http_client, name):
            raise _moved(f"KaggleHttpClient.{name}")


def _moved(what: str) -> EndpointSeamError:
    return EndpointSeamError(
        f"cannot point the kaggle client at a custom endpoint: {what} no longer exists "
        "in the installed kagglesdk",
        hint="install the kaggle and kagglesdk versions kaggle-relay pins (kaggle 2.2.x), "
        f"or unset {ENV_VAR} to use Kaggle's production endpoint",
    )


def point_client_at(client: Any, endpoint: str) -> Any:
    """Make a kagglesdk ``KaggleClient`` send its requests to ``endpoint``; return it."""
    from kagglesdk import KaggleEnv  # type: ignore[attr-defined]

    http_client = getattr(client, "_http_client", None)
    if http_client is None:
        raise _moved("KaggleClient._http_client")
    _check_http_client(http_client)
    http_client._endpoint = endpoint.rstrip("/")
    http_client._env = KaggleEnv.LOCAL
    return client


@functools.cache
def endpoint_api_class() -> type:
    """Return a ``KaggleApi`` subclass whose clients go to ``self.endpoint`` when it is set."""
    base: Any = load_kaggle_api_class()

    def build_kaggle_client(self: Any) -> Any:
        client = base.build_kaggle_client(self)
        if self.endpoint:
            point_client_at(client, self.endpoint)
        return client

    return type(
        "EndpointKaggleApi",
        (base,),
        {"endpoint": None, "build_kaggle_client": build_kaggle_client, "__module__": __name__},
    )


def create_api(endpoint: str | None = None, *, authenticate: bool = False) -> Any:
    """Create a ``KaggleApi`` whose every RPC goes to ``endpoint`` (production when None).

    ``KaggleApi`` reads ``KAGGLE_CONFIG_DIR`` once, when its module is first
    imported, so the config paths are refreshed here from the current
    environment. ``authenticate=True`` calls ``KaggleApi.authenticate()``,
    which exits the process when no credential is found: callers check for
    credentials first.
    """
    if endpoint:
        check_seam()
    api = endpoint_api_class()()
    api.endpoint = endpoint.rstrip("/") if endpoint else None
    _refresh_config_paths(api)
    if authenticate:
        api.authenticate()
    return api


def _refresh_config_paths(api: Any) -> None:
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if not config_dir:
        return
    api.config_dir = config_dir
    api.config = os.path.join(config_dir, api.config_file)
