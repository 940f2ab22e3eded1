"""Execute a notebook cell by cell with a real Jupyter kernel, as a kernel run of the emulator.

Run as a script: ``python notebook_exec.py NOTEBOOK EXECUTED_COPY ISOLATION_CODE_FILE``.
It imports nothing from kaggle_relay, so the emulator can start it without
our package on the path. Stream output of every cell goes to this
process's stdout or stderr as it arrives, which is how the emulator builds
the version's log. The exit status is 0 when every cell ran, 1 when a cell
raised or the notebook cannot run, and 143 on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


class StreamingClient(NotebookClient):  # type: ignore[misc]
    """A NotebookClient that copies each output to stdout/stderr as it arrives."""

    def output(self, outs: Any, msg: dict[str, Any], display_id: Any, cell_index: int) -> Any:
        content = msg.get("content", {})
        kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        if kind == "stream":
            stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
            stream.write(content.get("text", ""))
            stream.flush()
        elif kind == "error":
            sys.stderr.write("\n".join(content.get("traceback", [])) + "\n")
            sys.stderr.flush()
        return super().output(outs, msg, display_id, cell_index)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    source, executed, isolation_file = argv
    signal.signal(signal.SIGTERM, _stop)
    notebook = nbformat.read(source, as_version=4)
    kernelspec = notebook.metadata.get("kernelspec")
    if not kernelspec or not kernelspec.get("name"):
        sys.stderr.write("Notebook has no metadata.kernelspec; the kernel cannot start.\n")
        return 1

    with open(isolation_file, encoding="utf-8") as handle:
        isolation = nbformat.v4.new_code_cell(handle.read())
    notebook.cells.insert(0, isolation)
    client = StreamingClient(
        notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": "."}}
    )
    status = 0
    try:
        client.execute()
    except CellExecutionError:
        status = 1
    except KeyboardInterrupt:
        status = 143
    finally:
        notebook.cells.pop(0)
        nbformat.write(notebook, executed)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
