"""``kaggle-relay publish DIR --dataset OWNER/SLUG``: headless dataset versioning.

Validates the checkpoints in DIR with the runtime's validator and publishes
the selected one, with its manifest and any carried files, as a new version
of the dataset. A dataset that does not exist is created. The command waits
until the version is READY and checks its file listing. Progress goes to
stderr, the result to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from kaggle_relay.cli import exitcodes

DESCRIPTION = """\
Validate the checkpoints in DIR, publish the selected one (with its manifest
and any --carry files) as a new version of --dataset, creating the dataset if
needed, and wait until the version is READY and its file listing matches.
Needs Kaggle credentials; the endpoint is KAGGLE_RELAY_API_ENDPOINT when set."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish the best checkpoint of a folder as a dataset version",
        description=DESCRIPTION,
        epilog=exitcodes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder holding the checkpoints")
    parser.add_argument("--dataset", required=True, metavar="OWNER/SLUG", help="dataset to create or version")
    parser.add_argument("--pattern", action="append", default=None, metavar="GLOB",
                        help="checkpoint file pattern (repeatable; default: the scan defaults)")  # fmt: skip
    parser.add_argument("--require-key", action="append", default=[], metavar="KEY",
                        help="key every valid checkpoint must have (repeatable, dotted for nesting)")  # fmt: skip
    parser.add_argument("--metric", help="select the best checkpoint by this metric")
    parser.add_argument("--mode", choices=("max", "min"), help="max when higher is better, min for a loss")
    parser.add_argument("--carry", action="append", default=[], metavar="FILE",
                        help="file (path relative to DIR, globs allowed) to publish with the checkpoint (repeatable)")  # fmt: skip
    parser.add_argument("--title", help="dataset title, 6 to 50 characters (default: from the slug)")
    parser.add_argument("--notes", default="", help="text put in the version notes")
    parser.add_argument("--run-id", help="identity written into the manifest and the version notes; "
                        "a rerun with the same id reuses the version (default: from the checkpoint's hash)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="how long to wait for the version to become READY, in seconds (default: %(default)s)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kaggle_relay.relay import client, publish
    from kaggle_relay.relay.refs import DatasetRef
    from kaggle_relay.runtime.select import DEFAULT_PATTERNS

    dataset = DatasetRef.parse(args.dataset)
    if dataset.version is not None:
        print(f"error: --dataset takes OWNER/SLUG without a version, not {args.dataset}", file=sys.stderr)
        return exitcodes.USAGE
    patterns = args.pattern or list(DEFAULT_PATTERNS)
    selected = publish.select_checkpoint(
        args.dir, patterns=patterns, require_keys=args.require_key, metric=args.metric, mode=args.mode
    )
    run_id = args.run_id or _content_run_id(Path(selected.path))
    api = client.connect()
    with _status(f"publishing {Path(selected.path).name} to {dataset}", quiet=args.json):
        result = publish.publish_checkpoints(
            api, args.dir, dataset, patterns=patterns, require_keys=args.require_key, metric=args.metric,
            mode=args.mode, carry=args.carry, run_id=run_id, handoff_note=args.notes, timeout=args.timeout,
            title=args.title, progress=not args.json,
        )  # fmt: skip
    _print_result(result, as_json=args.json)
    return exitcodes.OK


def _content_run_id(path: Path) -> str:
    """Name a headless publication after the checkpoint's content, so a rerun finds its version."""
    digest = hashlib.sha256()
    files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
    for item in files:
        with item.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return f"publish-{digest.hexdigest()[:16]}"


class _NoStatus:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _status(text: str, *, quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        print(text, file=sys.stderr)
        return _NoStatus()
    from rich.console import Console

    return Console(stderr=True).status(text)


def _print_result(result: Any, *, as_json: bool) -> None:
    checkpoint = result.checkpoint
    if as_json:
        data = {
            "dataset": str(result.dataset),
            "version": result.dataset.version,
            "run_id": result.run_id,
            "reused": result.reused,
            "files": result.sizes,
            "checkpoint": checkpoint.to_dict() if checkpoint else None,
        }
        print(json.dumps(data, indent=2))
        return
    verb = "already published as" if result.reused else "published"
    print(f"{verb} {result.dataset} (READY, {len(result.files)} files checked)")
    if checkpoint is not None:
        print(f"  checkpoint: {Path(checkpoint.path).name}  epoch {checkpoint.epoch}  step {checkpoint.step}  "
              f"metrics {checkpoint.metrics}")  # fmt: skip
    print(f"  attach it with dataset_sources: [\"{result.dataset}\"]")
