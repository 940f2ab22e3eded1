"""``kaggle-relay scan``: list, validate and select checkpoints without importing torch.

Only the runtime's metadata path is imported here (no torch, no kaggle),
so the command returns in well under a second. Legacy (non-zip) torch
files are the exception: validating one imports torch.
"""

from __future__ import annotations

import argparse
import json
import os

from kaggle_relay.cli import exitcodes

DESCRIPTION = """\
Find checkpoint files under the Kaggle layout (or the ROOT folders given),
validate each one from its metadata (complete, loads with weights_only, required
keys, finite metric, manifest size and sha256), and select one: the best by
--metric in the direction of --mode, or else working before input datasets
before notebook outputs, then the newest step."""

EPILOG = f"""\
exit codes:
  0   a valid checkpoint was selected
  {exitcodes.NO_VALID_CHECKPOINT}   no valid checkpoint was found
  {exitcodes.USAGE}   invalid arguments (for example --metric without --mode)

examples:
  kaggle-relay scan
  kaggle-relay scan ./outputs --metric val_loss --mode min --json
  kaggle-relay scan --pattern 'ckpt-*.pt' --require-key model --require-key optimizer"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="find, validate and select checkpoints (no torch import)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "roots",
        nargs="*",
        metavar="ROOT",
        help="folders to scan; a folder holding working/ or input/ is read as the Kaggle layout "
        "(default: $KAGGLE_RELAY_KAGGLE_ROOT, else /kaggle)",
    )
    parser.add_argument("--pattern", action="append", metavar="GLOB", help="file name glob (repeatable; default: *.pt *.pth *.ckpt *.bin *.safetensors checkpoint-*)")
    parser.add_argument("--require-key", action="append", default=[], metavar="KEY", help="a key every valid checkpoint must have: top-level name or dotted path such as model.fc.weight (repeatable)")
    parser.add_argument("--metric", help="select the best checkpoint by this metric (needs --mode)")
    parser.add_argument("--mode", choices=("max", "min"), help="max when higher --metric is better (accuracy), min when lower is (loss)")
    parser.add_argument("--show-invalid", action="store_true", help="also list invalid candidates, each with its reason")
    parser.add_argument("--json", action="store_true", help='print one JSON object {"selected": ..., "candidates": [...]} on stdout')
    parser.add_argument("--trust", action="append", default=[], metavar="SOURCE=LEVEL", help="trust level for a source (working, notebook_output) or a dataset (owner/slug): weights_only, globals or full (repeatable)")
    parser.add_argument("--trust-global", action="append", default=[], metavar="NAME", help="a global that level 'globals' allows, such as numpy.ndarray (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kaggle_relay.errors import ConfigError
    from kaggle_relay.runtime import select
    from kaggle_relay.runtime.diagnose import print_report
    from kaggle_relay.runtime.trust import SOURCES, TrustPolicy

    if bool(args.metric) != bool(args.mode):
        raise ConfigError("--metric and --mode go together: --mode min for a loss, --mode max for accuracy")
    missing = [root for root in args.roots if not os.path.isdir(root)]
    if missing:
        raise ConfigError(f"no such folder: {', '.join(missing)}", hint="pass folders that exist, or no ROOT for the Kaggle layout")
    sources: dict[str, str] = {}
    datasets: dict[str, str] = {}
    for item in args.trust:
        name, _, level = item.partition("=")
        (sources if name in SOURCES else datasets)[name] = level
    try:
        policy = TrustPolicy(sources=sources, datasets=datasets, globals=args.trust_global)
    except ConfigError as exc:
        raise ConfigError(f"--trust: {exc}", hint=exc.hint) from exc

    result = select.scan(
        args.roots or None,
        patterns=tuple(args.pattern or select.DEFAULT_PATTERNS),
        require_keys=tuple(args.require_key),
        metric=args.metric,
        mode=args.mode,
        trust=policy,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_report(result, show_invalid=args.show_invalid)
    return exitcodes.OK if result.selected else exitcodes.NO_VALID_CHECKPOINT
