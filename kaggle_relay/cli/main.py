"""Entry point of ``kaggle-relay``.

Each command lives in its own module, imported only when that command runs,
so ``--help`` and metadata-only commands (scan, status) never import torch
or the kaggle package.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import typing
from collections.abc import Sequence

from kaggle_relay import __version__
from kaggle_relay.cli import exitcodes
from kaggle_relay.errors import (
    ConfigError,
    CredentialsError,
    KaggleUnavailableError,
    NoValidCheckpointError,
    RelayError,
)

# command name -> module holding ``add_parser(subparsers)``; each parser sets ``func``.
COMMANDS = {
    "scan": "kaggle_relay.cli.scan",
    "init": "kaggle_relay.cli.init",
    "next-day": "kaggle_relay.cli.nextday",
    "status": "kaggle_relay.cli.status",
    "publish": "kaggle_relay.cli.publish",
    "rehearse": "kaggle_relay.cli.rehearse",
    "emulator": "kaggle_relay.cli.emulator",
}

log = logging.getLogger("kaggle_relay")


def build_parser() -> argparse.ArgumentParser:
    parser = JsonAwareParser(
        prog="kaggle-relay",
        description="Carry a PyTorch training run across Kaggle sessions.",
        epilog=exitcodes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kaggle-relay {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=JsonAwareParser)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_parser(subparsers)
    return parser


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, NoValidCheckpointError):
        return exitcodes.NO_VALID_CHECKPOINT
    if isinstance(error, CredentialsError):
        return exitcodes.CREDENTIALS
    if isinstance(error, KaggleUnavailableError):
        return exitcodes.KAGGLE_UNAVAILABLE
    if isinstance(error, ConfigError) and not error.path:
        # Not tied to relay.toml or another file: a value given on the command line.
        return exitcodes.USAGE
    if isinstance(error, RelayError):
        return exitcodes.NEEDS_ATTENTION
    return exitcodes.ERROR


def error_document(error: BaseException, code: int) -> dict[str, object]:
    """Return the ``--json`` form of a failed command, so stdout always parses."""
    document: dict[str, object] = {
        "error": {
            "type": type(error).__name__,
            "message": str(error),
            "hint": getattr(error, "hint", ""),
        },
        "code": code,
    }
    return document


class JsonAwareParser(argparse.ArgumentParser):
    """An ArgumentParser that reports invalid arguments as JSON when ``--json`` was given."""

    json_output = False

    def error(self, message: str) -> typing.NoReturn:
        if JsonAwareParser.json_output:
            error = ValueError(f"{self.prog}: {message}")
            print(json.dumps(error_document(error, exitcodes.USAGE)))
        super().error(message)


def configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("kaggle_relay")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(argv: list[str]) -> int:
    # --debug is accepted before or after the command name.
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    JsonAwareParser.json_output = "--json" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    configure_logging(debug)
    try:
        return int(args.func(args) or 0)
    except RelayError as error:
        return report_error(error, debug=debug, as_json=getattr(args, "json", False))


def report_error(error: RelayError, *, debug: bool, as_json: bool) -> int:
    if debug:
        log.exception("failed")
    code = exit_code_for(error)
    print(f"error: {error}", file=sys.stderr)
    if error.hint:
        print(f"  fix: {error.hint}", file=sys.stderr)
    if as_json:
        print(json.dumps(error_document(error, code)))
    return code


if __name__ == "__main__":
    sys.exit(main())
