"""Find Kaggle credentials without importing the ``kaggle`` package.

``import kaggle`` authenticates at import time and, without credentials,
prints a long help text to stdout and calls ``exit(1)`` inside a try block.
So the relay looks for credentials itself, first, in the places the client
2.2.x reads them, in the client's order:

1. ``KAGGLE_API_TOKEN`` (the token, or the path of a file holding it),
   then ``~/.kaggle/access_token`` (or ``access_token.txt``);
2. ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``, each falling back to the same key
   of ``kaggle.json`` in the config folder;
3. OAuth credentials saved by ``kaggle auth login`` in ``~/.kaggle/credentials.json``.

The config folder is ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else (on
Linux, when ``~/.kaggle`` does not exist) ``$XDG_CONFIG_HOME/kaggle``. The
client reads an ``access_token`` file only from ``~/.kaggle``; the relay also
accepts one in the config folder and hands its path to the client.

Secrets never leave this module: ``Credentials`` stores where they are, not
what they are, and ``mask`` removes them from any text before it is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kaggle_relay.errors import CredentialsError

MASK = "****"


@dataclass(frozen=True)
class Credentials:
    """The location and owner of the credentials, never the secret itself."""

    kind: Literal["token", "key", "oauth"]
    source: str
    #: Empty for a bare token, because only the server can map it to a user.
    username: str = ""
    #: An access-token file the client does not look for by itself.
    token_file: str = ""


def config_dir() -> Path:
    """Return the folder where the client looks for ``kaggle.json``."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    home_dir = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home_dir.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle"
    return home_dir


def find_credentials() -> Credentials:
    """Return the credentials the client will use; raise CredentialsError if there are none."""
    found = _find_token() or _find_key() or _find_oauth()
    if found is None:
        raise CredentialsError(_missing_message())
    return found


def check_credentials() -> str:
    """Return the username of the credentials found (empty for a bare token).

    Raises CredentialsError naming every way to provide credentials.
    """
    return find_credentials().username


def _find_token() -> Credentials | None:
    value = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if value:
        if Path(value).is_file():
            if not _read_text(Path(value)):
                raise CredentialsError(f"KAGGLE_API_TOKEN names the file {value}, which is empty")
            return Credentials("token", f"the token file named by KAGGLE_API_TOKEN ({value})")
        return Credentials("token", "the KAGGLE_API_TOKEN environment variable")
    for folder in dict.fromkeys([Path.home() / ".kaggle", config_dir()]):
        for name in ("access_token", "access_token.txt"):
            path = folder / name
            if path.is_file() and _read_text(path):
                in_home = folder == Path.home() / ".kaggle"
                return Credentials("token", f"the access token file {path}", token_file="" if in_home else str(path))
    return None


def _find_key() -> Credentials | None:
    path = config_dir() / "kaggle.json"
    stored = _read_kaggle_json(path)
    username = os.environ.get("KAGGLE_USERNAME") or str(stored.get("username") or "")
    has_key = bool(os.environ.get("KAGGLE_KEY") or stored.get("key"))
    if username and has_key:
        sources = []
        if os.environ.get("KAGGLE_USERNAME") or os.environ.get("KAGGLE_KEY"):
            sources.append("KAGGLE_USERNAME/KAGGLE_KEY")
        if stored:
            sources.append(str(path))
        return Credentials("key", " and ".join(sources), username=username)
    if username or has_key:
        missing = "KAGGLE_KEY (or 'key' in kaggle.json)" if username else "KAGGLE_USERNAME (or 'username' in kaggle.json)"
        raise CredentialsError(f"incomplete Kaggle API key: {missing} is missing")
    return None


def _find_oauth() -> Credentials | None:
    path = Path.home() / ".kaggle" / "credentials.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("refresh_token"):
        return None
    return Credentials("oauth", f"the OAuth credentials in {path}", username=str(data.get("username") or ""))


def _read_kaggle_json(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError) as exc:
        # The client silently ignores an unreadable kaggle.json, so name the invalid file here.
        raise CredentialsError(
            f"{path} is not readable JSON ({type(exc).__name__})",
            hint='write {"username": "...", "key": "..."} into it, or remove it',
        ) from None
    return data if isinstance(data, dict) else {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _missing_message() -> str:
    folder = config_dir()
    return (
        "no Kaggle credentials found. Provide one of: "
        "the environment variables KAGGLE_USERNAME and KAGGLE_KEY; "
        "KAGGLE_API_TOKEN (a token, or the path of a file holding one); "
        f"{folder / 'kaggle.json'} with 'username' and 'key' (set KAGGLE_CONFIG_DIR to use another folder); "
        f"an access_token file in {folder} or ~/.kaggle; "
        "or OAuth credentials saved by 'kaggle auth login'"
    )


# --- masking ---------------------------------------------------------------

_AUTH_HEADER = re.compile(r"(\b(?:Basic|Bearer)\s+)[A-Za-z0-9+/=._~-]{8,}", re.IGNORECASE)
_JSON_SECRET = re.compile(r'("(?:key|token|access_token|refresh_token)"\s*:\s*")[^"]*(")')


def secret_values() -> list[str]:
    """Return every secret value the process can see, for masking."""
    values = [os.environ.get("KAGGLE_KEY", ""), os.environ.get("KAGGLE_API_TOKEN", "")]
    token_env = values[1]
    if token_env and Path(token_env).is_file():
        values.append(_read_text(Path(token_env)))
    for folder in dict.fromkeys([Path.home() / ".kaggle", config_dir()]):
        for name in ("access_token", "access_token.txt"):
            values.append(_read_text(folder / name))
    with contextlib.suppress(CredentialsError):
        values.append(str(_read_kaggle_json(config_dir() / "kaggle.json").get("key") or ""))
    # Very short values would mask ordinary words; real keys and tokens are long.
    return sorted({value for value in values if len(value) >= 8}, key=len, reverse=True)


def mask(text: str) -> str:
    """Return ``text`` with every known Kaggle secret replaced by ``****``."""
    for value in secret_values():
        text = text.replace(value, MASK)
    text = _AUTH_HEADER.sub(lambda match: match.group(1) + MASK, text)
    return _JSON_SECRET.sub(lambda match: match.group(1) + MASK + match.group(2), text)
