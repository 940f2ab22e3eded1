"""Run a pushed kernel version as a local process in a Kaggle-shaped folder.

Each version runs in ``<data>/runs/<owner>/<slug>/v<N>/kaggle/`` with
``working/`` as the current folder and ``input/`` holding the attached
datasets and kernel outputs (read-only). Scripts run with this Python;
notebooks run cell by cell through ``notebook_exec.py`` and a Jupyter
kernel. The process environment carries ``KAGGLE_KERNEL_RUN_TYPE=Batch``,
``KAGGLE_RELAY_KAGGLE_ROOT`` and ``KAGGLE_RELAY_SESSION_DEADLINE``, and
neither ``PYTHONPATH`` nor kaggle_relay: a bootstrap removes our package
from the import system before the user's code runs, as on Kaggle where
only the pushed code exists.

At the deadline the process group gets SIGTERM, then SIGKILL after the
grace period. The version then ends ``CANCEL_ACKNOWLEDGED`` with an empty
failure message and a timeout line in its log. Its outputs are dropped
unless the server keeps killed outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kaggle_relay.emulator import notebook_exec
from kaggle_relay.emulator.protocol import now
from kaggle_relay.runtime.atomic import write_text

if TYPE_CHECKING:
    from kaggle_relay.emulator.server import Emulator

log = logging.getLogger(__name__)

ISOLATION_CODE = """\
import importlib, importlib.machinery, os, sys
def _kaggle_relay_hidden():
    standard = (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter,
                importlib.machinery.PathFinder)
    for finder in list(sys.meta_path):
        if finder in standard or not hasattr(finder, "find_spec"):
            continue
        try:
            found = finder.find_spec("kaggle_relay", None)
        except Exception:
            found = None
        if found is not None:
            sys.meta_path.remove(finder)
    sys.path[:] = [entry for entry in sys.path
                   if not os.path.isdir(os.path.join(entry or ".", "kaggle_relay"))]
    for name in [name for name in sys.modules if name.split(".")[0] == "kaggle_relay"]:
        del sys.modules[name]
    importlib.invalidate_caches()
_kaggle_relay_hidden()
del _kaggle_relay_hidden
"""

SCRIPT_BOOTSTRAP = (
    ISOLATION_CODE
    + """\
import runpy
_script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(_script))
runpy.run_path(_script, run_name="__main__")
"""
)

# Host environment variables left out of a run, because a Kaggle session does not have them.
_HIDDEN_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "KAGGLE_CONFIG_DIR",
    "KAGGLE_RELAY_API_ENDPOINT",
    "KAGGLE_RELAY_SESSION_LIMIT",
)


def timeout_line(limit: float) -> str:
    """The log line of a version killed at the session limit."""
    return (
        f"Execution timed out: the session limit of {limit:g} seconds was reached, "
        "so the session was stopped.\n"
    )


class RunLog:
    """Log entries of one run, in Kaggle's log format (a JSON list of stream chunks)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.entries: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, stream: str, text: str) -> None:
        entry = {
            "stream_name": stream,
            "time": round(time.monotonic() - self.started, 3),
            "data": text,
        }
        with self.lock:
            self.entries.append(entry)

    def render(self) -> str:
        with self.lock:
            lines = [json.dumps(entry, ensure_ascii=False) for entry in self.entries]
        if not lines:
            return "[]"
        return "[" + "\n,".join(lines) + "\n]"


class Run:
    """One running version: its process, log and deadline."""

    def __init__(self, ref: str, number: int, folder: Path, limit: float) -> None:
        self.ref = ref
        self.number = number
        self.folder = folder
        self.limit = limit
        self.log = RunLog()
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    @property
    def root(self) -> Path:
        return self.folder / "kaggle"

    @property
    def working(self) -> Path:
        return self.root / "working"


class Runner:
    """Starts, watches and ends kernel runs, one thread each."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.runs: dict[tuple[str, int], Run] = {}
        self.lock = threading.Lock()

    def live_log(self, ref: str, number: int) -> str | None:
        with self.lock:
            run = self.runs.get((ref, number))
        return run.log.render() if run else None

    def start(self, ref: str, number: int, limit: float) -> None:
        owner, slug = ref.split("/")
        folder = self.emulator.store.data_dir / "runs" / owner / slug / f"v{number}"
        run = Run(ref, number, folder, limit)
        with self.lock:
            self.runs[(ref, number)] = run
        thread = threading.Thread(
            target=self._run, args=(run,), name=f"run-{ref}-v{number}", daemon=True
        )
        thread.start()

    def stop_all(self) -> None:
        """Kill every running process; their versions end ERROR (the server is going away)."""
        with self.lock:
            for run in self.runs.values():
                run.stopping.set()
                _kill_group(run.process, signal.SIGKILL)

    def _run(self, run: Run) -> None:
        try:
            self._execute(run)
        except Exception as error:  # a bug here must still end the version
            log.exception("run of %s v%d failed inside the emulator", run.ref, run.number)
            run.log.add("stderr", f"emulator error: {error}\n")
            self._finish(run, "ERROR", f"emulator error: {error}", keep_outputs=True)
        finally:
            with self.lock:
                self.runs.pop((run.ref, run.number), None)

    def _execute(self, run: Run) -> None:
        version = self.emulator.kernels.version(run.ref, run.number)
        if run.folder.exists():
            shutil.rmtree(run.folder)
        run.working.mkdir(parents=True)
        (run.root / "input").mkdir()
        mounts = self.emulator.mounts.attach(version, run.root / "input")
        self.emulator.kernels.update_version(run.ref, run.number, mounts=mounts)

        command = self._command(run, version)
        deadline = now() + run.limit
        env = self._environment(run, deadline)
        self.emulator.kernels.update_version(
            run.ref, run.number, status="RUNNING", started=now(), deadline=deadline
        )
        with self.lock:
            # stop_all may have run before the process existed; it must not outlive the server.
            if run.stopping.is_set():
                self._conclude(run, timed_out=False)
                return
            run.process = subprocess.Popen(
                command,
                cwd=run.working,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        readers = [
            _start_reader(run.process.stdout, "stdout", run.log),
            _start_reader(run.process.stderr, "stderr", run.log),
        ]
        timed_out = self._wait(run, deadline)
        for reader in readers:
            reader.join(timeout=5)
        self._conclude(run, timed_out)

    def _command(self, run: Run, version: dict[str, Any]) -> list[str]:
        source_dir = run.folder / "source"
        source_dir.mkdir(parents=True, exist_ok=True)
        slug = run.ref.split("/")[1]
        if version["kernel_type"] == "notebook":
            notebook = source_dir / f"{slug}.ipynb"
            write_text(notebook, version["text"])
            isolation = source_dir / "isolation.py"
            write_text(isolation, ISOLATION_CODE)
            executed = run.folder / "executed.ipynb"
            return [
                sys.executable,
                notebook_exec.__file__,
                str(notebook),
                str(executed),
                str(isolation),
            ]
        script = source_dir / f"{slug}.py"
        write_text(script, version["text"])
        return [sys.executable, "-u", "-c", SCRIPT_BOOTSTRAP, str(script)]

    def _environment(self, run: Run, deadline: float) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in _HIDDEN_ENV}
        env.update(
            KAGGLE_KERNEL_RUN_TYPE="Batch",
            KAGGLE_RELAY_KAGGLE_ROOT=str(run.root),
            KAGGLE_RELAY_SESSION_DEADLINE=f"{deadline:.3f}",
            PYTHONUNBUFFERED="1",
            PYTHONIOENCODING="utf-8",
        )
        return env

    def _wait(self, run: Run, deadline: float) -> bool:
        """Wait for the process or the deadline; return True when the deadline killed it."""
        process = run.process
        assert process is not None
        try:
            process.wait(timeout=max(0.0, deadline - now()))
            return False
        except subprocess.TimeoutExpired:
            pass
        log.info("%s v%d reached its session limit of %g s", run.ref, run.number, run.limit)
        _kill_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=self.emulator.config.kill_grace)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            process.wait()
        return True

    def _conclude(self, run: Run, timed_out: bool) -> None:
        process = run.process
        if run.stopping.is_set() or process is None:
            run.log.add("stderr", "The emulator stopped while this version was running.\n")
            self._finish(run, "ERROR", "the emulator stopped while this version was running", True)
        elif timed_out:
            run.log.add("stderr", timeout_line(run.limit))
            self._finish(run, "CANCEL_ACKNOWLEDGED", "", self.emulator.config.keep_killed_outputs)
        elif process.returncode != 0:
            message = f"The kernel process exited with status {process.returncode}."
            self._finish(run, "ERROR", message, keep_outputs=True)
        else:
            self._finish(run, "COMPLETE", "", keep_outputs=True)

    def _finish(self, run: Run, status: str, failure: str, keep_outputs: bool) -> None:
        if not keep_outputs and run.working.exists():
            shutil.rmtree(run.working)
            run.working.mkdir()
        log_path = run.folder / "log.json"
        if run.folder.exists():
            write_text(log_path, run.log.render())
        outputs = collect_outputs(run.working, self.emulator.store.data_dir) if keep_outputs else []
        self.emulator.kernels.update_version(
            run.ref,
            run.number,
            status=status,
            failure_message=failure,
            ended=now(),
            outputs=outputs,
            log_path=self.emulator.store.relative(log_path),
        )
        log.info("%s v%d ended %s", run.ref, run.number, status)


def collect_outputs(working: Path, data_dir: Path) -> list[dict[str, Any]]:
    """List the regular files under ``working`` as output entries (names relative, with /)."""
    outputs: list[dict[str, Any]] = []
    if not working.exists():
        return outputs
    for path in sorted(working.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        outputs.append(
            {
                "name": path.relative_to(working).as_posix(),
                "path": path.relative_to(data_dir).as_posix(),
                "size": stat.st_size,
                "mtime": stat.st_mtime,
            }
        )
    return outputs


def _start_reader(stream: IO[bytes] | None, name: str, run_log: RunLog) -> threading.Thread:
    def pump() -> None:
        assert stream is not None
        for line in iter(stream.readline, b""):
            run_log.add(name, line.decode("utf-8", errors="replace"))
        stream.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _kill_group(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
