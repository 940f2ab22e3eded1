"""``kaggle-relay rehearse``: the whole relay loop offline, on the local emulator, with short sessions.

The emulator runs as a subprocess on 127.0.0.1 (``kaggle-relay emulator
serve``) with a short session limit. The project is copied into a
rehearsal folder, so the real project's ``.relay/`` ledger is never
touched, and throwaway credentials for the emulator go into a private
KAGGLE_CONFIG_DIR. ``--demo`` first writes the demo project from the
templates and, at the end, trains the same model uninterrupted with the
same seed and compares the two final models tensor for tensor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kaggle_relay.cli import exitcodes
from kaggle_relay.errors import ConfigError, RelayError

REHEARSAL_KEY = "rehearsal-key"
DEMO_EPOCHS = 12
# A 15 s session holds at most 15 / 2 = 7 epochs of 2 s, fewer after start-up and the session
# clock's margin, so the 12 epochs of the demo need 3 or more sessions.
DEMO_EPOCH_SECONDS = 2.0
DEMO_SESSION_LIMIT = 15.0
# The init template trains 12 epochs: at 2 s or more each they need 24 s, so sessions of 20 s split
# the default rehearsal into 2 sessions or more on any machine, and a slower one only adds sessions.
SESSION_LIMIT = 20.0
EPOCH_SECONDS = 2.0
EPOCH_FLOOR = re.compile(r"^MIN_EPOCH_SECONDS = .*$", re.MULTILINE)

HELP = f"""Run the relay loop offline: start the Kaggle API emulator on 127.0.0.1 with
a short session limit, advance every chain with next-day --wait until it is
done, and print each day. The project is copied into a rehearsal folder
under the temporary folder (TMPDIR, else /tmp), so its own .relay/ ledger is
not touched, and the emulator gets throwaway credentials. The rehearsal
folder is deleted at the end, unless --keep is given or a chain did not
finish; its path is printed when it is kept.
A resume is proven only when a chain takes two sessions or more: a chain
that finishes in one session prints a warning. In the rehearsal copy, a
script that defines MIN_EPOCH_SECONDS (as the init template does) gets
--epoch-seconds, so short sessions split even a tiny model's training.
--demo writes the demo project (a small classifier on synthetic data) and compares the
relayed model with the same training run uninterrupted.

{exitcodes.HELP}"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rehearse", help="run the whole loop offline on the emulator", description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--demo", action="store_true", help="write and run the demo project")
    parser.add_argument("--dir", type=Path, help="project folder (default: . ; with --demo: ./demo)")
    parser.add_argument("--session-limit", type=float,
                        help=f"session length of each emulated run in seconds (default: {SESSION_LIMIT:.0f}; "
                        f"{DEMO_SESSION_LIMIT:.0f} with --demo)")
    parser.add_argument("--epoch-seconds", type=float, default=EPOCH_SECONDS,
                        help="minimum duration of one epoch in seconds, written into MIN_EPOCH_SECONDS of the "
                        "rehearsal copy's script when it defines it; 0 leaves the script as it is "
                        "(default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the rehearsal folder (copy, ledgers, downloads, emulator log) and print its path")
    parser.add_argument("--days", type=int, default=20, help="stop after this many sessions (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


# --- emulator subprocess ---------------------------------------------------------------


@contextlib.contextmanager
def emulator_process(data_dir: Path, *, user: str, session_limit: float) -> Iterator[str]:
    """Start ``kaggle-relay emulator serve`` on a free loopback port; yield its URL."""
    arguments = [
        "emulator", "serve", "--host", "127.0.0.1", "--port", "0", "--data", str(data_dir),
        "--session-limit", str(session_limit), "--kill-grace", "2", "--processing-delay", "0.5",
        "--user", f"{user}:{REHEARSAL_KEY}",
    ]
    with serve_emulator(arguments, data_dir.parent / "emulator.log") as (_process, url):
        yield url


@contextlib.contextmanager
def serve_emulator(arguments: list[str], log_path: Path | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``kaggle-relay <arguments>`` (an ``emulator serve``); yield the process and its URL; stop it on exit.

    Its stderr goes to ``log_path`` when given, else to this process's stderr.
    """
    command = [sys.executable, "-m", "kaggle_relay.cli.main", *arguments]
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(log_path.open("w", encoding="utf-8")) if log_path else None
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True)
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1"):
                raise RelayError(f"the emulator did not start (first line {url!r}); see {log_path or 'stderr'}")
            yield process, url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()


@contextlib.contextmanager
def rehearsal_environment(config_dir: Path, url: str, user: str) -> Iterator[None]:
    """Point this process at the emulator with throwaway credentials; restore the environment after."""
    config_dir.mkdir(parents=True, exist_ok=True)
    credentials = config_dir / "kaggle.json"
    credentials.write_text(json.dumps({"username": user, "key": REHEARSAL_KEY}), encoding="utf-8")
    credentials.chmod(0o600)
    changes = {"KAGGLE_CONFIG_DIR": str(config_dir), "KAGGLE_RELAY_API_ENDPOINT": url}
    removed = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")
    saved = {name: os.environ.get(name) for name in (*changes, *removed)}
    os.environ.update(changes)
    for name in removed:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- projects ---------------------------------------------------------------------------


def write_demo(folder: Path) -> Path:
    """Write the demo project into ``folder`` (replacing an earlier demo) and return relay.toml."""
    from kaggle_relay.cli import init

    if folder.exists() and (folder / ".relay").exists():
        shutil.rmtree(folder / ".relay")
    names = init.Names(owner="relay-demo", slug="relay-demo-train", dataset="relay-demo/relay-demo-handoff",
                       accelerator="none")
    init.write_project(folder, names, force=True)
    script = folder / "kernel" / "train.py"
    text = script.read_text(encoding="utf-8")
    text = re.sub(r"^EPOCHS = \d+$", f"EPOCHS = {DEMO_EPOCHS}", text, flags=re.MULTILINE)
    text = re.sub(r"^MIN_EPOCH_SECONDS = .*$", f"MIN_EPOCH_SECONDS = {DEMO_EPOCH_SECONDS}", text, flags=re.MULTILINE)
    script.write_text(text, encoding="utf-8")
    return folder / "relay.toml"


def copy_project(
    config_path: Path, dest: Path, *, session_limit: float, days: int, epoch_seconds: float = 0.0
) -> Path:
    """Copy the project into ``dest`` with rehearsal settings; return the copy's relay.toml."""
    import tomllib

    from kaggle_relay.relay.config import load_config

    load_config(config_path)  # a missing or invalid relay.toml fails here, before anything is copied
    source = config_path.resolve().parent
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".relay", ".git", "__pycache__", "demo"))
    path = dest / config_path.name
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw.pop("endpoint", None)
    for chain in raw.get("chain", []):
        # The emulator runs on this machine's CPU, so the accelerator check must expect none.
        chain["accelerator"] = "none"
        chain["session_timeout"] = max(60, int(session_limit))
        chain.setdefault("stop", {})["max_days"] = days
        chain["wait"] = {"poll_seconds": 1.0, "dataset_ready_seconds": 60.0}
    path.write_text(_to_toml(raw), encoding="utf-8")
    if epoch_seconds > 0:
        for chain in load_config(path).chain:
            if chain.kernel_is_folder:
                set_epoch_floor(chain.kernel_folder, epoch_seconds)
    return path


def set_epoch_floor(kernel_folder: Path, seconds: float) -> bool:
    """Write ``MIN_EPOCH_SECONDS = seconds`` into the kernel's code file when it defines that constant."""
    from kaggle_relay.relay.bundle import read_metadata

    code_file = read_metadata(kernel_folder).get("code_file")
    script = kernel_folder / str(code_file)
    if not code_file or not script.is_file():
        return False
    text = script.read_text(encoding="utf-8")
    if not EPOCH_FLOOR.search(text):
        return False
    script.write_text(EPOCH_FLOOR.sub(f"MIN_EPOCH_SECONDS = {seconds!r}", text), encoding="utf-8")
    return True


def _to_toml(raw: dict[str, Any]) -> str:
    """Write the small subset of TOML that relay.toml uses (tables, arrays of tables, scalars, lists)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in raw.items() if not isinstance(value, dict | list)]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in value.items())]
    for chain in raw.get("chain", []):
        lines += ["", "[[chain]]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in chain.items() if not isinstance(v, dict)]
        for table, values in chain.items():
            if isinstance(values, dict):
                lines += [f"[chain.{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def owner_of(config_path: Path) -> str:
    from kaggle_relay.relay.config import load_config

    owners = {chain.dataset.split("/")[0] for chain in load_config(config_path).chain}
    if len(owners) != 1:
        raise ConfigError(f"{config_path}: rehearse needs every chain under one owner, found {sorted(owners)}")
    return owners.pop()


# --- running ----------------------------------------------------------------------------


def rehearse(config_path: Path, work: Path, *, session_limit: float) -> list[dict[str, Any]]:
    """Run every chain of ``config_path`` to the end on a fresh emulator; return the per-day rows."""
    from kaggle_relay.relay import chain as chains
    from kaggle_relay.relay.config import load_config

    user = owner_of(config_path)
    data_dir = work / "emulator"
    data_dir.mkdir(parents=True, exist_ok=True)
    with emulator_process(data_dir, user=user, session_limit=session_limit) as url:
        print(f"emulator at {url}, sessions of {session_limit:.0f} s", file=sys.stderr)
        with rehearsal_environment(work / "kaggle-config", url, user):
            config = load_config(config_path)
            outcomes = []
            for chain in config.chain:
                outcome = chains.advance(chain, wait=True, quota=config.quota, hook=_progress_hook(chain.name))
                outcomes.append(outcome)
    return [summarise(config_path, outcome) for outcome in outcomes]


def _progress_hook(name: str) -> Any:
    def hook(step: str) -> None:
        if step == "push":
            print(f"[{time.strftime('%H:%M:%S')}] {name}: pushing the next session", file=sys.stderr)

    return hook


def summarise(config_path: Path, outcome: Any) -> dict[str, Any]:
    from kaggle_relay.relay.ledger import Ledger

    ledger = Ledger.open(config_path.resolve().parent / ".relay", outcome.chain)
    days = []
    previous_epoch = -1
    for run in ledger.runs:
        checkpoint = run.checkpoint
        last_epoch = checkpoint.epoch if checkpoint and checkpoint.epoch is not None else previous_epoch
        days.append({
            "day": run.day, "kernel_version": run.kernel_version, "status": run.status, "ended_by": run.ended_by,
            "epochs": [previous_epoch + 1, last_epoch] if last_epoch > previous_epoch else [],
            "metrics": checkpoint.metrics if checkpoint else {},
            "dataset_version": run.published.version if run.published else None,
        })
        previous_epoch = last_epoch
    return {"name": outcome.chain, "state": ledger.state, "days": days,
            "error": ledger.data.error.model_dump() if ledger.data.error else None}


def print_days(result: dict[str, Any]) -> None:
    print(f"chain {result['name']}: {result['state']} after {len(result['days'])} session(s)")
    for day in result["days"]:
        epochs = f"epochs {day['epochs'][0]}-{day['epochs'][1]}" if day["epochs"] else "no new epoch"
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in day["metrics"].items())
        print(f"  day {day['day']}: version {day['kernel_version']} {day['status']}, {epochs}"
              f"{', ' + metrics if metrics else ''}"
              f"{', handoff v' + str(day['dataset_version']) if day['dataset_version'] else ''}")
    if result["error"]:
        print(f"  error: {result['error']['message']}")


# --- the demo's uninterrupted reference -------------------------------------------------------


def reference_run(project: Path, work: Path) -> Path:
    """Train the project's script once, uninterrupted, in its own Kaggle-shaped folder; return its newest checkpoint."""
    from kaggle_relay.runtime.manifest import load_manifest

    root = work / "reference" / "kaggle"
    (root / "working").mkdir(parents=True, exist_ok=True)
    (root / "input").mkdir(exist_ok=True)
    script = project / "kernel" / "train.py"
    text = re.sub(r"^MIN_EPOCH_SECONDS = .*$", "MIN_EPOCH_SECONDS = 0.0", script.read_text(encoding="utf-8"),
                  flags=re.MULTILINE)
    copy = work / "reference" / "train.py"
    copy.write_text(text, encoding="utf-8")
    env = {**os.environ, "KAGGLE_RELAY_KAGGLE_ROOT": str(root),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in ("KAGGLE_RELAY_SESSION_DEADLINE", "KAGGLE_RELAY_SESSION_LIMIT", "KAGGLE_RELAY_HANDOFF",
                 "KAGGLE_RELAY_ACCELERATOR"):
        env.pop(name, None)
    subprocess.run([sys.executable, str(copy)], cwd=root / "working", env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    folder = root / "working" / "checkpoints"
    manifest = load_manifest(folder)
    newest = manifest.newest() if manifest else None
    if newest is None:
        raise RelayError(f"the uninterrupted reference run saved no checkpoint in {folder}")
    return folder / newest.file


def compare_models(relayed: Path, reference: Path) -> dict[str, Any]:
    """Compare the model tensors of two checkpoints; return accuracies and whether they are identical."""
    import torch

    first = torch.load(relayed, map_location="cpu", weights_only=True)
    second = torch.load(reference, map_location="cpu", weights_only=True)
    model_a, model_b = first["model"], second["model"]
    identical = model_a.keys() == model_b.keys() and all(torch.equal(model_a[key], model_b[key]) for key in model_a)
    return {"identical": identical}


def final_checkpoint(config_path: Path, chain_name: str) -> tuple[Path, dict[str, float]] | None:
    from kaggle_relay.relay.harvest import OUTPUT_FOLDER
    from kaggle_relay.relay.ledger import Ledger, work_dir

    state_dir = config_path.resolve().parent / ".relay"
    ledger = Ledger.open(state_dir, chain_name)
    handoff = ledger.data.handoff
    if handoff is None or handoff.checkpoint is None:
        return None
    folder = work_dir(state_dir, chain_name) / "runs" / handoff.run_id / "download" / OUTPUT_FOLDER
    return folder / handoff.checkpoint.file, handoff.checkpoint.metrics


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="kaggle-relay-rehearsal-"))
    if args.session_limit is None:
        args.session_limit = DEMO_SESSION_LIMIT if args.demo else SESSION_LIMIT
    try:
        report = _rehearse_project(args, work)
    except BaseException:
        print(f"rehearsal folder kept at {work}", file=sys.stderr)
        raise
    finished = all(item["state"] == "done" for item in report["chains"])
    keep = args.keep or not finished
    report["work_dir"] = str(work) if keep else None
    _print_report(report, as_json=args.json)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if keep:
        print(f"rehearsal folder kept at {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return exitcodes.OK if finished else exitcodes.NEEDS_ATTENTION


def _rehearse_project(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.demo:
        project = (args.dir or Path("demo")).resolve()
        config_path = write_demo(project)
        print(f"demo project written to {project}", file=sys.stderr)
    else:
        source = (args.dir or Path(".")).resolve() / "relay.toml"
        config_path = source
    config_path = copy_project(config_path, work / "project", session_limit=args.session_limit, days=args.days,
                               epoch_seconds=args.epoch_seconds)
    print(f"rehearsing a copy of the project in {config_path.parent}", file=sys.stderr)

    results = rehearse(config_path, work, session_limit=args.session_limit)
    report: dict[str, Any] = {"chains": results, "warnings": single_session_warnings(results, args.session_limit)}
    if args.demo:
        report["comparison"] = _demo_comparison(config_path, work, results[0]["name"])
    return report


def single_session_warnings(results: list[dict[str, Any]], session_limit: float) -> list[str]:
    """Warn for each chain that finished in one session: no resume was exercised, so nothing is proven."""
    return [
        f"chain {item['name']} finished in one session, so no resume was exercised; rerun with a lower "
        f"--session-limit (now {session_limit:.0f} s) or a higher --epoch-seconds so that training takes "
        "two sessions or more"
        for item in results
        if item["state"] == "done" and len(item["days"]) == 1
    ]


def _demo_comparison(config_path: Path, work: Path, chain_name: str) -> dict[str, Any]:
    found = final_checkpoint(config_path, chain_name)
    if found is None:
        return {"identical": False, "error": "the chain handed over no checkpoint"}
    relayed, metrics = found
    reference = reference_run(config_path.parent, work)
    result = compare_models(relayed, reference)
    result["relayed_val_acc"] = metrics.get("val_acc")
    result["uninterrupted_val_acc"] = _manifest_metric(reference)
    return result


def _manifest_metric(checkpoint: Path) -> float | None:
    from kaggle_relay.runtime.manifest import load_manifest

    manifest = load_manifest(checkpoint.parent)
    entry = manifest.entry(checkpoint.name) if manifest else None
    return entry.metrics.get("val_acc") if entry else None


def _number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def _print_report(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    for result in report["chains"]:
        print_days(result)
    comparison = report.get("comparison")
    if comparison:
        print(f"final val_acc: relayed {_number(comparison.get('relayed_val_acc'))}, "
              f"uninterrupted {_number(comparison.get('uninterrupted_val_acc'))}")
        print(f"final models identical tensor for tensor: {'yes' if comparison['identical'] else 'NO'}")
