"""``kaggle-relay emulator serve``: run the Kaggle API emulator until stopped.

The first line of stdout is the endpoint URL, so a script can read it and
point a client there (``KAGGLE_RELAY_API_ENDPOINT``). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from kaggle_relay.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator",
        help="run a local Kaggle API emulator for tests and rehearsals",
        description="A Kaggle API server on loopback that the real kaggle client talks to.",
    )
    commands = parser.add_subparsers(dest="emulator_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve until SIGINT or SIGTERM; prints the endpoint URL first",
        description="Serve the emulator. The first line of stdout is its endpoint URL.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 takes a free one (default 0)"
    )
    serve.add_argument(
        "--data", required=True, help="folder for the emulator's state, blobs and runs"
    )
    serve.add_argument(
        "--session-limit",
        type=float,
        default=43200.0,
        help="session length of each kernel run in seconds (default 43200, Kaggle's 12 h)",
    )
    serve.add_argument(
        "--kill-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL at the session limit (default 5)",
    )
    serve.add_argument(
        "--processing-delay",
        type=float,
        default=2.0,
        help="seconds a new dataset version processes before it is READY (default 2)",
    )
    serve.add_argument(
        "--transfer-rate",
        type=float,
        default=0.0,
        metavar="MB_PER_S",
        help="pace each upload and download to this many megabytes per second, like a real link "
        "(default 0: as fast as loopback goes)",
    )
    serve.add_argument(
        "--input-layout",
        choices=("flat", "nested"),
        default="flat",
        help="where inputs are mounted: input/<slug> (flat) or input/datasets/<owner>/<slug> (nested)",
    )
    serve.add_argument(
        "--keep-killed-outputs",
        action="store_true",
        help="keep the files a run wrote before it was killed at the session limit (default: drop them)",
    )
    serve.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:KEY",
        help="a user and API key to accept; repeat for more (default emulator-user:emulator-key)",
    )
    serve.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN:NAME",
        help="an access token (Bearer auth) and the user it belongs to; repeatable",
    )
    serve.set_defaults(func=run)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        first, sep, second = value.partition(":")
        if not sep or not first or not second:
            raise ConfigError(
                f"invalid {option} {value!r}: expected two values joined by ':'", field=option
            )
        pairs[first] = second
    return pairs


def run(args: argparse.Namespace) -> int:
    from kaggle_relay.emulator import Emulator, EmulatorConfig

    config_values: dict[str, Any] = {}
    if args.user:
        config_values["users"] = _pairs(args.user, "--user")
    if args.token:
        config_values["tokens"] = _pairs(args.token, "--token")
    config = EmulatorConfig(
        data_dir=args.data,
        host=args.host,
        port=args.port,
        session_limit=args.session_limit,
        kill_grace=args.kill_grace,
        processing_delay=args.processing_delay,
        transfer_rate=args.transfer_rate * 1e6,
        input_layout=args.input_layout,
        keep_killed_outputs=args.keep_killed_outputs,
        **config_values,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    emulator = Emulator(config).start()
    print(emulator.url, flush=True)
    users = ", ".join(sorted(config.users))
    print(f"serving {emulator.url} for user(s) {users}; data in {config.data_dir}", file=sys.stderr)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0
