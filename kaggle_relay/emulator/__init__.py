"""A Kaggle API server on loopback that the real ``kaggle`` client (2.2.x) talks to.

Start it from Python::

    from kaggle_relay.emulator import Emulator, EmulatorConfig
    with Emulator(EmulatorConfig(data_dir=tmp, session_limit=30)) as emulator:
        api = kaggle_relay.relay.endpoint.create_api(emulator.url, authenticate=True)

or from a shell: ``kaggle-relay emulator serve --data DIR`` (prints the URL first).
The relay never imports this package; it reaches the emulator through
``kaggle_relay.relay.endpoint`` and ``KAGGLE_RELAY_API_ENDPOINT``.

Faults on demand. ``emulator.faults.inject(route, kind, times=1,
retry_after=None, seconds=1.0)`` makes the next ``times`` calls of
``route`` fail. A route is an RPC method name (``SaveKernel``,
``GetKernelSessionStatus``, ``ListKernelSessionOutput``, ``GetKernel``,
``StartBlobUpload``, ``CreateDataset``, ``CreateDatasetVersion``,
``CreateDatasetVersionById``, ``GetDatasetStatus``, ``GetDataset``,
``ListDatasetFiles``, ``GetDatasetMetadata``, ``DownloadDataset``),
``upload`` (blob PUTs) or ``download`` (file GETs). Kinds:

- ``429``: HTTP 429 with ``Retry-After`` (``retry_after`` seconds, default 1);
- ``500``, ``503``: that status (503 carries ``Retry-After`` only when given);
- ``drop``: the connection closes without an answer;
- ``slow``: the answer comes ``seconds`` late;
- ``expire`` (download): HTTP 403, as from an expired signed URL;
- ``truncate`` (download): full ``Content-Length``, half the body, closed;
- ``upload-stop`` (upload): half the body is kept, the answer is 503, and the
  client resumes through a 308 probe;
- ``version-failed`` (the dataset creation RPCs): the next version ends
  FAILED after the processing delay; ``faults.fail_next_dataset_version()``
  is the shorthand.

``faults.pending()`` lists what is left, ``faults.clear()`` drops it, and
``emulator.add_output(kernel, version, name, data)`` adds an output entry
with any name (``../escape.txt``, ``/tmp/abs.txt``, ``a\\b.pt``) to a
finished version's listing.

The same surface over HTTP, without authentication, for a server started
from the command line:

- ``POST /_emulator/faults`` ``{"route": ..., "kind": ..., "times": N,
  "retry_after": S, "seconds": S}``; ``GET`` lists, ``DELETE`` clears;
- ``POST /_emulator/outputs`` ``{"kernel": "owner/slug", "version": N,
  "name": ..., "content": "text"}`` (or ``"content_base64"``, or ``"file"``: the
  name of a file the caller put in ``<data>/imports/``, linked without being read);
- ``GET /_emulator/health``.
"""

from kaggle_relay.emulator.config import DEFAULT_KEY, DEFAULT_USER, EmulatorConfig
from kaggle_relay.emulator.faults import KINDS, Fault, Faults
from kaggle_relay.emulator.server import Emulator

__all__ = ["DEFAULT_KEY", "DEFAULT_USER", "KINDS", "Emulator", "EmulatorConfig", "Fault", "Faults"]
