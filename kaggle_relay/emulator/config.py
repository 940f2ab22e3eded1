"""Settings of one emulator server, fixed when it starts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from kaggle_relay.errors import ConfigError

DEFAULT_USER = "emulator-user"
DEFAULT_KEY = "emulator-key"
KAGGLE_SESSION_LIMIT = 43200.0
"""Kaggle's session length in seconds (12 h); also the largest accepted sessionTimeoutSeconds."""


@dataclass
class EmulatorConfig:
    """What an emulator serves and how it runs kernels.

    ``users`` maps a user name to its API key (HTTP Basic auth), ``tokens``
    maps an access token to a user name (Bearer auth and IntrospectToken).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    session_limit: float = KAGGLE_SESSION_LIMIT
    kill_grace: float = 5.0
    processing_delay: float = 2.0
    #: Bytes per second of each upload and download; 0 leaves them unpaced.
    transfer_rate: float = 0.0
    input_layout: str = "flat"
    keep_killed_outputs: bool = False
    users: dict[str, str] = field(default_factory=lambda: {DEFAULT_USER: DEFAULT_KEY})
    tokens: dict[str, str] = field(default_factory=dict)
    output_page_cap: int = 500
    file_page_cap: int = 500

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        check_loopback(self.host)
        if self.input_layout not in ("flat", "nested"):
            raise ConfigError(
                f"invalid input layout {self.input_layout!r}: use 'flat' or 'nested'",
                field="input_layout",
            )
        if self.session_limit <= 0 or self.kill_grace < 0 or self.processing_delay < 0 or self.transfer_rate < 0:
            raise ConfigError(
                "session limit must be positive; kill grace, processing delay and transfer rate must not be negative"
            )
        for token, user in self.tokens.items():
            if user not in self.users:
                raise ConfigError(f"token {token[:4]}… names unknown user {user!r}", field="tokens")


def check_loopback(host: str) -> None:
    """Raise ConfigError unless ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ConfigError(
            f"refusing to bind the emulator to {host!r}: it serves only loopback addresses",
            field="host",
            hint="use --host 127.0.0.1 (the default)",
        )
