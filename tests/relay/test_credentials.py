from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kaggle_relay.errors import CredentialsError
from kaggle_relay.relay import credentials
from kaggle_relay.relay.credentials import check_credentials, find_credentials, mask

SECRET_KEY = "0123456789abcdef0123456789abcdef"
SECRET_TOKEN = "KGAT_9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def test_missing_credentials_name_every_way(_isolated_kaggle_config: Path) -> None:
    with pytest.raises(CredentialsError) as caught:
        check_credentials()
    message = str(caught.value)
    for way in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "kaggle.json", "access_token", "kaggle auth login"):
        assert way in message
    assert str(_isolated_kaggle_config) in message


def test_environment_key_returns_username(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    assert check_credentials() == "alice"
    assert find_credentials().kind == "key"


def test_kaggle_json_in_config_dir_is_found(_isolated_kaggle_config: Path) -> None:
    path = _isolated_kaggle_config / "kaggle.json"
    path.write_text(json.dumps({"username": "bob", "key": SECRET_KEY}), encoding="utf-8")
    found = find_credentials()
    assert found.username == "bob"
    assert str(path) in found.source


def test_username_without_key_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    with pytest.raises(CredentialsError, match="KAGGLE_KEY"):
        check_credentials()


def test_unreadable_kaggle_json_names_the_file(_isolated_kaggle_config: Path) -> None:
    path = _isolated_kaggle_config / "kaggle.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CredentialsError, match="kaggle.json"):
        check_credentials()


def test_token_in_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    found = find_credentials()
    assert found.kind == "token"
    assert found.username == ""


def test_access_token_in_config_dir_is_handed_over(_isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(_isolated_kaggle_config / "elsewhere"))
    path = _isolated_kaggle_config / "access_token"
    path.write_text(SECRET_TOKEN + "\n", encoding="utf-8")
    found = find_credentials()
    assert found.kind == "token"
    assert found.token_file == str(path)


def test_oauth_credentials_are_found(_isolated_kaggle_config: Path) -> None:
    folder = Path.home() / ".kaggle"
    folder.mkdir()
    (folder / "credentials.json").write_text(
        json.dumps({"refresh_token": SECRET_TOKEN, "username": "carol"}), encoding="utf-8"
    )
    assert find_credentials().kind == "oauth"
    assert check_credentials() == "carol"


def test_credentials_repr_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    assert SECRET_KEY not in repr(find_credentials())
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET_TOKEN)
    assert SECRET_TOKEN not in repr(find_credentials())


def test_mask_removes_key_token_and_headers(_isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    (_isolated_kaggle_config / "access_token").write_text(SECRET_TOKEN, encoding="utf-8")
    text = (
        f"key={SECRET_KEY} token {SECRET_TOKEN}\n"
        "Authorization: Basic YWxpY2U6c2VjcmV0\n"
        '{"username": "alice", "key": "other-secret-value"}'
    )
    masked = mask(text)
    assert SECRET_KEY not in masked
    assert SECRET_TOKEN not in masked
    assert "YWxpY2U6c2VjcmV0" not in masked
    assert "other-secret-value" not in masked
    assert '"username": "alice"' in masked


def test_checking_credentials_logs_no_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    with caplog.at_level(logging.DEBUG):
        find_credentials()
        credentials.secret_values()
    captured = capsys.readouterr()
    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in captured.out + captured.err
