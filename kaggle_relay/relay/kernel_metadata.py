"""Checks on ``kernel-metadata.json`` and its code file, before anything is pushed.

The kaggle client (2.2.x) and Kaggle accept metadata that then fails in ways
that are hard to see:

- Without ``enable_internet`` the client turns internet on; ``"enable_gpu": 1``
  crashes it with a TypeError. So the four booleans must be JSON booleans
  (the strings "true"/"false" are converted), and missing ones are written
  explicitly with the relay's defaults.
- A title that does not slug to the id (an em dash, for example) makes
  Kaggle create or rename a kernel under another slug. The relay accepts
  only titles of ASCII letters, digits, spaces, hyphens and underscores
  whose slug equals the id's slug.
- The client rejects slugs under five characters; Kaggle refuses an owner
  other than the authenticated user.
- A notebook without ``metadata.kernelspec`` is accepted by the push and
  fails at once on Kaggle.
- The code file is read as UTF-8 everywhere, so a file in another encoding
  is rejected here instead of being read with the platform encoding.

Each refusal is a ConfigError naming the field and the rule.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kaggle_relay.errors import ConfigError
from kaggle_relay.relay.config import GPU_SHAPES, TPU_SHAPES
from kaggle_relay.relay.refs import DatasetRef, KernelRef

METADATA_NAME = "kernel-metadata.json"

#: The relay's value for each boolean the metadata leaves out.
BOOLEAN_DEFAULTS = {"is_private": True, "enable_gpu": False, "enable_tpu": False, "enable_internet": False}

_TITLE_CHARACTERS = re.compile(r"^[A-Za-z0-9 _-]+$")


def read_metadata(folder: Path) -> dict[str, Any]:
    """Read ``kernel-metadata.json`` of ``folder`` as UTF-8."""
    path = folder / METADATA_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _invalid(path, "", "the file is missing", "run `kaggle-relay init` or write it") from None
    except UnicodeDecodeError:
        raise _invalid(path, "", "the file is not UTF-8", "save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _invalid(path, "", f"not valid JSON ({exc})", "fix the JSON syntax") from None
    if not isinstance(data, dict):
        raise _invalid(path, "", "expected a JSON object", "write the metadata as one JSON object")
    return data


def validate_kernel_metadata(folder: Path, *, username: str) -> dict[str, Any]:
    """Check the kernel folder; return its metadata with explicit booleans.

    ``username`` is the authenticated user, who must own the kernel.
    """
    path = folder / METADATA_NAME
    meta = read_metadata(folder)
    ref = _check_id(path, meta, username)
    _check_title(path, meta, ref)
    _check_kind(path, meta)
    normalized = dict(meta)
    normalized.update(_booleans(path, meta))
    _check_accelerator(path, normalized)
    _check_sources(path, meta)
    _check_code_file(folder, path, meta)
    return normalized


def slug_of_title(title: str) -> str:
    """Return the slug Kaggle derives from an ASCII title: lowercase words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _check_id(path: Path, meta: dict[str, Any], username: str) -> KernelRef:
    if "id_no" in meta and "id" not in meta:
        raise _invalid(path, "id", "the relay needs 'id' as 'owner/slug' (not only 'id_no')", f'add "id": "{username}/your-kernel"')
    text = meta.get("id")
    if not isinstance(text, str) or not text:
        raise _invalid(path, "id", "missing; write it as 'owner/slug'", f'add "id": "{username}/your-kernel"')
    if text.endswith("INSERT_KERNEL_SLUG_HERE"):
        raise _invalid(path, "id", "still the template placeholder", "write the kernel's slug")
    try:
        ref = KernelRef.parse(text)
    except ConfigError as exc:
        raise _invalid(path, "id", str(exc), exc.hint or "write it as 'owner/slug' with a slug of 5+ characters") from None
    if ref.version is not None:
        raise _invalid(path, "id", "must not carry a version", f'write "{ref.unversioned()}"')
    if username and ref.owner != username:
        raise _invalid(
            path,
            "id",
            f"owner {ref.owner!r} is not the authenticated user {username!r}",
            f'write "{username}/{ref.slug}", or use the credentials of {ref.owner}',
        )
    return ref


def _check_title(path: Path, meta: dict[str, Any], ref: KernelRef) -> None:
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        raise _invalid(path, "title", "missing", f'add "title" that slugs to {ref.slug!r}')
    if title == "INSERT_TITLE_HERE":
        raise _invalid(path, "title", "still the template placeholder", f"write a title that slugs to {ref.slug!r}")
    if len(title) < 5:
        raise _invalid(path, "title", f"{title!r} is shorter than 5 characters", f"write a title that slugs to {ref.slug!r}")
    if not _TITLE_CHARACTERS.match(title):
        raise _invalid(
            path,
            "title",
            f"{title!r} has characters other than ASCII letters, digits, spaces, '-' and '_', "
            "which Kaggle may slug differently",
            f"write a title that slugs to {ref.slug!r}, such as {ref.slug.replace('-', ' ').title()!r}",
        )
    if slug_of_title(title) != ref.slug:
        raise _invalid(
            path,
            "title",
            f"{title!r} slugs to {slug_of_title(title)!r}, not to the id's slug {ref.slug!r}",
            f"write a title such as {ref.slug.replace('-', ' ').title()!r}",
        )


def _check_kind(path: Path, meta: dict[str, Any]) -> None:
    language = meta.get("language", "python")
    if language != "python":
        raise _invalid(path, "language", f"{language!r} is not supported", 'write "language": "python"')
    kernel_type = meta.get("kernel_type")
    if kernel_type not in ("script", "notebook"):
        raise _invalid(path, "kernel_type", f"{kernel_type!r} is not 'script' or 'notebook'", 'write "kernel_type": "script"')


def _booleans(path: Path, meta: dict[str, Any]) -> dict[str, bool]:
    result = {}
    for key, default in BOOLEAN_DEFAULTS.items():
        value = meta.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise _invalid(path, key, f"{value!r} is not a JSON boolean", f'write "{key}": true or "{key}": false')
        result[key] = value
    return result


def _check_accelerator(path: Path, meta: dict[str, Any]) -> None:
    shape = meta.get("machine_shape") or None
    gpu, tpu = meta["enable_gpu"], meta["enable_tpu"]
    if gpu and tpu:
        raise _invalid(path, "enable_tpu", "enable_gpu and enable_tpu are both true", "choose one accelerator")
    if shape is None:
        if gpu or tpu:
            raise _invalid(
                path,
                "machine_shape",
                "an accelerator is enabled but not named; enable_gpu alone has given retired P100 GPUs",
                "set machine_shape to one of " + ", ".join((*GPU_SHAPES, *TPU_SHAPES)),
            )
        return
    if shape in GPU_SHAPES:
        expected = (True, False)
    elif shape in TPU_SHAPES:
        expected = (False, True)
    else:
        raise _invalid(path, "machine_shape", f"{shape!r} is not one of " + ", ".join((*GPU_SHAPES, *TPU_SHAPES)), "set accelerator in relay.toml")
    if (gpu, tpu) != expected:
        raise _invalid(
            path,
            "machine_shape",
            f"{shape!r} needs enable_gpu={str(expected[0]).lower()} and enable_tpu={str(expected[1]).lower()}",
            "let the relay write the metadata from relay.toml",
        )


def _check_sources(path: Path, meta: dict[str, Any]) -> None:
    sources = meta.get("dataset_sources", [])
    if not isinstance(sources, list):
        raise _invalid(path, "dataset_sources", "must be a list of 'owner/slug' or 'owner/slug/N'", "write a JSON list")
    for source in sources:
        try:
            DatasetRef.parse(str(source))
        except ConfigError as exc:
            raise _invalid(path, "dataset_sources", str(exc), exc.hint or "write 'owner/slug/N'") from None


def _check_code_file(folder: Path, path: Path, meta: dict[str, Any]) -> None:
    name = meta.get("code_file")
    if not isinstance(name, str) or not name:
        raise _invalid(path, "code_file", "missing", 'add "code_file": "train.py"')
    code = folder / name
    try:
        text = code.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _invalid(path, "code_file", f"{code} does not exist", "write the file or fix the name") from None
    except UnicodeDecodeError as exc:
        raise _invalid(path, "code_file", f"{code} is not UTF-8 (byte {exc.start})", "save the file as UTF-8") from None
    if meta.get("kernel_type") == "notebook":
        check_notebook(code, text)


def check_notebook(code: Path, text: str) -> None:
    """Check that a notebook is JSON with cells and a Python ``metadata.kernelspec``."""
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(code, "", f"not a notebook: invalid JSON ({exc})", "save it from Jupyter") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise _invalid(code, "cells", "the notebook has no 'cells' list", "save it from Jupyter")
    metadata = notebook.get("metadata")
    kernelspec = metadata.get("kernelspec") if isinstance(metadata, dict) else None
    if not isinstance(kernelspec, dict) or not kernelspec.get("name"):
        raise _invalid(
            code,
            "metadata.kernelspec",
            "missing; Kaggle accepts the push and the session fails at once",
            'add "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}',
        )
    language = kernelspec.get("language", "python")
    if language != "python":
        raise _invalid(code, "metadata.kernelspec.language", f"{language!r} is not python", 'write "language": "python"')


def _invalid(path: Path, field: str, rule: str, hint: str) -> ConfigError:
    where = f"{path}: {field}: " if field else f"{path}: "
    return ConfigError(where + rule, path=str(path), field=field, hint=hint)
