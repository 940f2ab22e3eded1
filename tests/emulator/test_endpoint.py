"""The endpoint seam that points a real KaggleApi at another server."""

from __future__ import annotations

import pytest
from kagglesdk.kaggle_http_client import KaggleHttpClient

from kaggle_relay.errors import EndpointSeamError
from kaggle_relay.relay import endpoint
from kaggle_relay.relay.endpoint import ENV_VAR, check_seam, create_api, resolve_endpoint


def test_environment_wins_over_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_endpoint(None) is None
    assert resolve_endpoint("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    monkeypatch.setenv(ENV_VAR, "http://127.0.0.1:9001")
    assert resolve_endpoint("http://127.0.0.1:9000") == "http://127.0.0.1:9001"


def test_endpoint_without_scheme_is_rejected() -> None:
    with pytest.raises(EndpointSeamError, match="must start with http"):
        resolve_endpoint("127.0.0.1:9000")


def test_api_without_endpoint_keeps_production() -> None:
    api = create_api(None)
    with api.build_kaggle_client() as client:
        url = client._http_client._get_request_url("kernels.KernelsApiService", "SaveKernel")
    assert url == "https://api.kaggle.com/v1/kernels.KernelsApiService/SaveKernel"


def test_api_with_endpoint_sends_rpcs_there() -> None:
    api = create_api("http://127.0.0.1:9")
    with api.build_kaggle_client() as client:
        url = client._http_client._get_request_url("kernels.KernelsApiService", "SaveKernel")
    assert url == "http://127.0.0.1:9/api/v1/kernels.KernelsApiService/SaveKernel"


def test_seam_fails_loudly_when_request_url_builder_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(KaggleHttpClient, "_get_request_url")

    with pytest.raises(
        EndpointSeamError, match=r"KaggleHttpClient\._get_request_url no longer exists"
    ):
        check_seam()
    with pytest.raises(EndpointSeamError):
        create_api("http://127.0.0.1:9")


def test_seam_fails_loudly_when_endpoint_attribute_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    original = KaggleHttpClient.__init__

    def without_endpoint(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        del self._endpoint

    monkeypatch.setattr(KaggleHttpClient, "__init__", without_endpoint)

    with pytest.raises(EndpointSeamError, match=r"KaggleHttpClient\._endpoint"):
        check_seam()


def test_seam_fails_loudly_when_client_holds_no_http_client() -> None:
    with pytest.raises(EndpointSeamError, match=r"KaggleClient\._http_client"):
        endpoint.point_client_at(object(), "http://127.0.0.1:9")
