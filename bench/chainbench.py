"""Helpers for the chain benchmarks: an emulator subprocess, chain projects and `kaggle-relay next-day` runs.

The emulator runs in its own process (``kaggle-relay --debug emulator
serve``) so that its threads do not share an interpreter lock with the
process being timed. With ``--debug`` it logs one line per HTTP request on
stderr, which is how the benchmarks count the requests a tick sends.
Everything binds 127.0.0.1 and lives in one temporary folder, credentials
included.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.served import write_credentials
from kaggle_relay.cli.rehearse import serve_emulator

ROOT = Path(__file__).resolve().parent.parent

USER = "bench-user"
KEY = "bench-key"
# One line per request in the emulator's debug log: '127.0.0.1 "POST /api/v1/<service>/<Method> HTTP/1.1" 200 -'.
_REQUEST_LINE = re.compile(r'"(?:GET|POST|PUT|DELETE) (\S+) HTTP/1\.[01]"')


def entry_point() -> Path:
    """Return the installed ``kaggle-relay`` script beside this interpreter."""
    script = Path(sys.executable).parent / "kaggle-relay"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: install the project (pip install -e .) into this interpreter's env")
    return script


@dataclass
class EmulatorProcess:
    """A running emulator subprocess, the environment that points clients at it, and its request log."""

    url: str
    folder: Path
    process: subprocess.Popen[str]
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """Return an environment for relay processes: throwaway credentials and the emulator's endpoint."""
        config = self.folder / "kaggle-config"
        env = {**os.environ, "KAGGLE_CONFIG_DIR": str(config), "HOME": str(config), "TMPDIR": str(config),
               "KAGGLE_RELAY_API_ENDPOINT": self.url}
        for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
            env.pop(name, None)
        return env

    def requests(self) -> list[str]:
        """List the paths of every request the emulator has logged so far, in order."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return _REQUEST_LINE.findall(text)

    def rpc(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one API call as plain JSON over HTTP, with the emulator user's credentials."""
        response = requests.post(f"{self.url}/api/v1/bench/{method}", json=body, auth=(USER, KEY), timeout=60)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def kernel_status(self, slug: str) -> str:
        """Return the status of the latest version of ``slug`` (``RUNNING``, ``COMPLETE``...)."""
        return str(self.rpc("GetKernelSessionStatus", {"userName": USER, "kernelSlug": slug})["status"])

    def wait_for_kernel(self, slug: str, *, timeout: float = 120.0) -> str:
        """Poll the latest version of ``slug`` until it is no longer queued or running; return its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.kernel_status(slug)
            if status not in ("QUEUED", "RUNNING"):
                return status
            time.sleep(0.1)
        raise TimeoutError(f"kernel {USER}/{slug} still running after {timeout:.0f} s")


@contextmanager
def emulator(folder: Path, *, processing_delay: float = 0.0, session_limit: float = 3600.0) -> Iterator[EmulatorProcess]:
    """Start ``kaggle-relay emulator serve`` on a free loopback port; stop it (and its runs) on exit."""
    write_credentials(folder, USER, KEY)
    log_path = folder / "emulator.log"
    arguments = [
        "--debug", "emulator", "serve", "--host", "127.0.0.1", "--port", "0",
        "--data", str(folder / "emulator-data"), "--user", f"{USER}:{KEY}",
        "--processing-delay", f"{processing_delay:g}", "--session-limit", f"{session_limit:g}", "--kill-grace", "1",
    ]
    with serve_emulator(arguments, log_path) as (process, url):
        yield EmulatorProcess(url=url, folder=folder, process=process, log_path=log_path)


def write_chains(project: Path, names: Sequence[str], script: str, *, extra: str = "") -> Path:
    """Write one kernel folder per chain (all running ``script``) and a relay.toml listing them; return its path.

    Each chain has its own kernel, because the relay refuses to push a kernel
    while one of its versions is still running. ``extra`` is appended to
    every [[chain]] table (patterns, require_keys, [chain.wait]...).
    """
    tables = []
    for name in names:
        kernel = project / f"kernel-{name}"
        kernel.mkdir(parents=True, exist_ok=True)
        (kernel / "main.py").write_text(script, encoding="utf-8")
        metadata = {
            "id": f"{USER}/{name}", "title": name.replace("-", " "), "code_file": "main.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_tpu": False,
            "enable_internet": False, "dataset_sources": [],
        }
        (kernel / "kernel-metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
        tables.append(f'[[chain]]\nname = "{name}"\nkernel = "kernel-{name}"\ndataset = "{USER}/{name}-handoff"\n{extra}')
    config = project / "relay.toml"
    config.write_text("\n".join(tables), encoding="utf-8")
    return config


def next_day(config: Path, env: dict[str, str], *options: str) -> dict[str, Any]:
    """Run the installed `kaggle-relay next-day --json` once and return its JSON result."""
    result = subprocess.run(
        [str(entry_point()), "next-day", "--config", str(config), "--json", *options],
        env=env, capture_output=True, text=True, timeout=600,
    )
    try:
        document: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"next-day printed no JSON (exit {result.returncode}); stderr:\n{result.stderr}") from None
    return document


def states(document: dict[str, Any]) -> Counter[str]:
    """Count the chains of a next-day result by state."""
    return Counter(item["state"] for item in document["chains"])


# --- a next-day run that also times the functions inside its steps ----------------------

#: (module, function name, label) of the functions timed inside harvest and publish. A label gets the
#: time of its function minus the time of any timed function it calls, so the labels never overlap.
TIMED_FUNCTIONS = (
    ("kaggle_relay.relay.harvest", "fetch_needed", "harvest download"),
    ("kaggle_relay.relay.harvest", "examine", "validate (harvest)"),
    ("kaggle_relay.relay.publish", "select_checkpoint", "validate (publish)"),
    ("kaggle_relay.relay.publish", "stage_handoff", "stage"),
    ("kaggle_relay.relay.datasets", "publish_folder", "upload and create version"),
    ("kaggle_relay.relay.datasets", "wait_for_ready", "wait READY"),
    ("kaggle_relay.relay.publish", "check_listing", "listing check"),
    ("kaggle_relay.relay.harvest", "verify_published", "listing check"),
)


class _Stopwatch:
    """Exclusive time per label: a nested timed call is subtracted from the call around it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._nested: list[float] = []

    def wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._nested.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._nested.pop()
                self.seconds[label] = self.seconds.get(label, 0.0) + elapsed - inner
                if self._nested:
                    self._nested[-1] += elapsed

        return timed


def _timed_child(started: float) -> int:
    """Run `next-day` in this process with TIMED_FUNCTIONS wrapped; write their seconds to ``argv[1]``.

    ``started`` is ``time.monotonic()`` at the child's first line. The
    monotonic clock is shared by every process on Linux, so the parent can
    split its wall time into start-up, imports, ``main`` and exit.
    """
    stopwatch = _Stopwatch()
    for module_name, name, label in TIMED_FUNCTIONS:
        module = importlib.import_module(module_name)
        setattr(module, name, stopwatch.wrap(getattr(module, name), label))
    from kaggle_relay.cli.main import main

    imported = time.monotonic()
    code = main(sys.argv[2:])
    ended = time.monotonic()
    stopwatch.seconds |= {"started at": started, "imports": imported - started, "main": ended - imported, "ended at": ended}
    Path(sys.argv[1]).write_text(json.dumps(stopwatch.seconds), encoding="utf-8")
    return code


def timed_next_day(config: Path, env: dict[str, str], seconds_path: Path) -> tuple[float, dict[str, Any], dict[str, float]]:
    """Run `next-day --json` in a child that times the functions inside its steps.

    Returns the wall time of the child, its JSON result and the seconds per label of TIMED_FUNCTIONS,
    with "interpreter start", "imports", "main" and "exit".
    """
    code = (
        "import time; started = time.monotonic(); import sys; "
        "from bench.chainbench import _timed_child; sys.exit(_timed_child(started))"
    )
    command = [sys.executable, "-c", code, str(seconds_path), "next-day", "--config", str(config), "--json"]
    start = time.monotonic()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    end = time.monotonic()
    try:
        document: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"next-day printed no JSON (exit {result.returncode}); stderr:\n{result.stderr}") from None
    seconds: dict[str, float] = json.loads(seconds_path.read_text(encoding="utf-8"))
    seconds["interpreter start"] = seconds.pop("started at") - start
    seconds["exit"] = end - seconds.pop("ended at")
    return end - start, document, seconds
