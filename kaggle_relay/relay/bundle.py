"""The folder the relay pushes: the user's kernel with the runtime bundled into its code file.

A Kaggle push sends one code file and its metadata, and a session may have
no internet, so ``pip install kaggle-relay`` is not an option inside the
kernel. The relay therefore embeds ``kaggle_relay/__init__.py``,
``kaggle_relay/errors.py`` and ``kaggle_relay/runtime/`` as a compressed,
base64-encoded zip archive in a short preamble. The preamble unpacks it to a
temporary folder, puts that folder first on ``sys.path`` and sets the
environment the runtime reads (handoff identity, accelerator, session
limit). A script gets the preamble after its docstring and ``__future__``
imports; a notebook gets it as a new first cell. The rest of the user's code
is pushed unchanged.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kaggle_relay
from kaggle_relay.errors import ConfigError
from kaggle_relay.runtime import atomic

log = logging.getLogger(__name__)

METADATA_NAME = "kernel-metadata.json"
PREAMBLE_MARK = "# --- kaggle-relay preamble"
RUN_MARK = "# kaggle-relay run "
_ARCHIVE_TIME = (1980, 1, 1, 0, 0, 0)
_LINE = 76


@dataclass(frozen=True)
class SessionEnv:
    """Environment values the preamble sets for the runtime in this session."""

    run_id: str
    handoff: dict[str, Any] | None = None
    accelerator: str | None = None
    session_limit: int | None = None


# --- the runtime archive -----------------------------------------------------


def runtime_files() -> list[tuple[Path, str]]:
    """List the files to bundle as (path on disk, name inside the archive)."""
    package = Path(kaggle_relay.__file__).parent
    files = [(package / "__init__.py", "kaggle_relay/__init__.py"), (package / "errors.py", "kaggle_relay/errors.py")]
    for path in sorted((package / "runtime").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        files.append((path, "kaggle_relay/" + path.relative_to(package).as_posix()))
    return files


def runtime_archive() -> bytes:
    """Zip the runtime with fixed timestamps, so the same sources give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path, name in runtime_files():
            info = zipfile.ZipInfo(name, date_time=_ARCHIVE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


# --- the preamble ------------------------------------------------------------


def preamble(env: SessionEnv) -> str:
    """Return Python source (3.10 syntax) that makes ``import kaggle_relay.runtime`` work offline."""
    encoded = base64.b64encode(runtime_archive()).decode("ascii")
    lines = [encoded[i : i + _LINE] for i in range(0, len(encoded), _LINE)]
    settings = _env_lines(env)
    return "\n".join(
        [
            f"{PREAMBLE_MARK} {kaggle_relay.__version__} (generated; your code follows it) ---",
            f"{RUN_MARK}{env.run_id}",
            "def _kaggle_relay_bootstrap():",
            "    import base64, io, os, sys, tempfile, zipfile",
            '    archive = base64.b64decode("""',
            *lines,
            '""")',
            '    folder = tempfile.mkdtemp(prefix="kaggle-relay-runtime-")',
            "    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:",
            "        bundle.extractall(folder)",
            "    sys.path.insert(0, folder)",
            *settings,
            "_kaggle_relay_bootstrap()",
            "del _kaggle_relay_bootstrap",
            f"{PREAMBLE_MARK} end ---",
            "",
        ]
    )


def _env_lines(env: SessionEnv) -> list[str]:
    lines = [f"    os.environ['KAGGLE_RELAY_RUN_ID'] = {env.run_id!r}"]
    if env.handoff is not None:
        lines.append(f"    os.environ['KAGGLE_RELAY_HANDOFF'] = {json.dumps(env.handoff, sort_keys=True)!r}")
    if env.accelerator:
        lines.append(f"    os.environ.setdefault('KAGGLE_RELAY_ACCELERATOR', {env.accelerator!r})")
    if env.session_limit:
        # A deadline set by the environment (the emulator) is the truth; do not shadow it.
        lines.append("    if not os.environ.get('KAGGLE_RELAY_SESSION_DEADLINE'):")
        lines.append(f"        os.environ.setdefault('KAGGLE_RELAY_SESSION_LIMIT', {str(env.session_limit)!r})")
    return lines


# --- code files ----------------------------------------------------------------


def bundle_script(source: str, env: SessionEnv, *, name: str = "script.py") -> str:
    """Insert the preamble into a script after its docstring and ``__future__`` imports."""
    try:
        tree = ast.parse(source, filename=name)
    except SyntaxError as exc:
        raise ConfigError(
            f"{name}: line {exc.lineno}: invalid Python: {exc.msg}",
            path=name,
            hint="fix the script; Kaggle would fail on it at the first line",
        ) from exc
    lines = source.splitlines(keepends=True)
    at = _insert_line(tree)
    head = lines[:at]
    if head and not head[-1].endswith("\n"):
        head[-1] += "\n"
    return "".join(head) + preamble(env) + "".join(lines[at:])


def _insert_line(tree: ast.Module) -> int:
    """Return the index of the first line after the docstring and ``__future__`` imports."""
    at = 0
    for index, node in enumerate(tree.body):
        is_docstring = index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (is_docstring or is_future):
            break
        at = node.end_lineno or at
    return at


def bundle_notebook(text: str, env: SessionEnv, *, name: str = "notebook.ipynb") -> str:
    """Return the notebook JSON with the preamble as a new first code cell."""
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid notebook JSON: {exc}", path=name) from exc
    kernelspec = notebook.get("metadata", {}).get("kernelspec")
    if not kernelspec:
        # Kaggle accepts such a push and then fails the session at once.
        raise ConfigError(
            f"{name}: metadata.kernelspec is missing",
            path=name,
            field="metadata.kernelspec",
            hint='add "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}',
        )
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "id": "kaggle-relay-preamble",
        "metadata": {},
        "outputs": [],
        "source": preamble(env).splitlines(keepends=True),
    }
    notebook["cells"] = [cell, *notebook.get("cells", [])]
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def bundled_run_id(code: str) -> str | None:
    """Return the run id a bundled code file carries, or None for code the relay did not bundle."""
    for line in code.splitlines():
        stripped = line.strip().strip('",')
        if stripped.startswith(RUN_MARK):
            return stripped[len(RUN_MARK) :].split("\\n")[0].strip()
    return None


# --- kernel metadata -----------------------------------------------------------


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found", path=str(path), hint="run `kaggle-relay init` or write it") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}", path=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object", path=str(path))
    return data


def push_metadata(
    metadata: dict[str, Any],
    *,
    handoff_source: str | None,
    handoff_dataset: str,
    accelerator: str,
) -> dict[str, Any]:
    """Return the metadata to push: explicit booleans, the accelerator and the pinned handoff.

    Every other ``dataset_sources`` entry is kept; any entry for the handoff
    dataset (pinned or not) is replaced by ``handoff_source`` (``owner/slug/N``).
    """
    result = dict(metadata)
    for key, default in (("is_private", True), ("enable_internet", False)):
        result[key] = _as_bool(metadata.get(key, default), key)
    result["enable_gpu"] = accelerator.startswith("Nvidia")
    result["enable_tpu"] = accelerator.startswith("Tpu")
    if accelerator == "none":
        result.pop("machine_shape", None)
    else:
        result["machine_shape"] = accelerator

    sources = [
        str(source)
        for source in metadata.get("dataset_sources", [])
        if "/".join(str(source).split("/")[:2]) != handoff_dataset
    ]
    if handoff_source:
        sources.append(handoff_source)
    result["dataset_sources"] = sources
    return result


def _as_bool(value: Any, key: str) -> bool:
    # The client reads strings "true"/"false" and crashes on integers, so only those two forms pass.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(
        f"{METADATA_NAME}: {key} must be true or false, not {value!r}",
        field=key,
        hint=f'write "{key}": true or "{key}": false',
    )


# --- the push folder -------------------------------------------------------------


def build_push_folder(
    source: Path,
    dest: Path,
    *,
    env: SessionEnv,
    handoff_dataset: str,
    accelerator: str,
) -> dict[str, Any]:
    """Write the folder to push into ``dest``: bundled code file and rewritten metadata.

    Returns the metadata written. Everything is read and written as UTF-8.
    """
    metadata = read_metadata(source)
    code_name = metadata.get("code_file")
    if not code_name:
        raise ConfigError(f"{source / METADATA_NAME}: code_file is missing", field="code_file")
    code_path = source / str(code_name)
    try:
        code = code_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{code_path}: code file not found", path=str(code_path), field="code_file") from exc

    if metadata.get("language", "python") != "python":
        raise ConfigError(f"{source / METADATA_NAME}: only Python kernels can be relayed", field="language")
    if metadata.get("kernel_type") == "notebook":
        bundled = bundle_notebook(code, env, name=str(code_path))
    else:
        bundled = bundle_script(code, env, name=str(code_path))

    pinned = None
    if env.handoff is not None:
        pinned = f"{env.handoff['dataset']}/{env.handoff['version']}"
    result = push_metadata(metadata, handoff_source=pinned, handoff_dataset=handoff_dataset, accelerator=accelerator)

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / str(code_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(target, bundled)
    atomic.write_text(dest / METADATA_NAME, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    log.debug("bundled %s (%d bytes) into %s", code_path.name, len(bundled), dest)
    return result
