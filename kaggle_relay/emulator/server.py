"""The emulator server: one object that owns the state, the services and the HTTP listener."""

from __future__ import annotations

import logging
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from kaggle_relay.emulator.config import EmulatorConfig
from kaggle_relay.emulator.datasets import Datasets
from kaggle_relay.emulator.faults import Faults
from kaggle_relay.emulator.handler import Handler
from kaggle_relay.emulator.kernels import Kernels
from kaggle_relay.emulator.mounts import Mounts
from kaggle_relay.emulator.runner import Runner
from kaggle_relay.emulator.store import Store
from kaggle_relay.emulator.transfers import Files, Uploads

log = logging.getLogger(__name__)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: Emulator


class Emulator:
    """A Kaggle API server on loopback. ``start()`` binds it; ``stop()`` ends it and its runs.

    ``faults`` is the Python handle for fault injection (see ``Faults``);
    ``add_output`` adds an output entry with any name to a kernel version.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.faults = Faults()
        self.kernels = Kernels(self)
        self.datasets = Datasets(self)
        self.uploads = Uploads(self)
        self.files = Files(self)
        self.mounts = Mounts(self)
        self.runner = Runner(self)
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def start(self) -> Emulator:
        self.kernels.recover()
        http = _HttpServer((self.config.host, self.config.port), Handler)
        http.emulator = self
        self._http = http
        self.url = f"http://{self.config.host}:{http.server_address[1]}"
        self._thread = threading.Thread(
            target=http.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="emulator-http",
            daemon=True,
        )
        self._thread.start()
        log.info("Kaggle API emulator serving %s from %s", self.url, self.config.data_dir)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, kill running kernels and wait (bounded) for their versions to end."""
        self.runner.stop_all()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        deadline = time.monotonic() + timeout
        while self.runner.runs and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("Kaggle API emulator at %s stopped", self.url)

    def add_output(self, kernel: str, version: int, name: str, data: bytes) -> None:
        """Add an output entry named ``name`` (any string) to ``kernel`` version ``version``."""
        self.kernels.add_output(kernel, version, name, data)

    def add_output_file(self, kernel: str, version: int, name: str, source: Path) -> None:
        """Add an output entry whose bytes are the file ``source`` (linked, not read into memory)."""
        self.kernels.add_output_file(kernel, version, name, source)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
