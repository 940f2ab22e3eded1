"""The pushed folder: runtime embedded in the code file, metadata rewritten, source otherwise unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_relay.errors import ConfigError
from kaggle_relay.relay.bundle import (
    SessionEnv,
    build_push_folder,
    bundle_notebook,
    bundle_script,
    bundled_run_id,
    push_metadata,
    runtime_archive,
)

ENV = SessionEnv(
    run_id="d002-20261204T200000-abcd",
    handoff={"dataset": "alice/digits-handoff", "version": 3, "run_id": "d001-x"},
    accelerator="none",
    session_limit=120,
)

USER_SCRIPT = '''"""Train ünïcode digits."""
from __future__ import annotations

import json
import os
import sys

from kaggle_relay.runtime import manifest

print(json.dumps({
    "manifest": manifest.MANIFEST_NAME,
    "handoff": os.environ.get("KAGGLE_RELAY_HANDOFF"),
    "accelerator": os.environ.get("KAGGLE_RELAY_ACCELERATOR"),
    "limit": os.environ.get("KAGGLE_RELAY_SESSION_LIMIT"),
    "runtime": manifest.__file__,
}))
'''


def clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ["HOME"], "TMPDIR": os.environ["TMPDIR"]}
    env.update(extra)
    return env


def run_bundled(path: Path, cwd: Path, **extra: str) -> dict[str, str]:
    # -I: isolated mode ignores PYTHONPATH and the user site, so only the preamble can provide kaggle_relay.
    result = subprocess.run(
        [sys.executable, "-I", str(path)], cwd=cwd, env=clean_env(**extra), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bundled_script_imports_runtime_with_clean_path(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(bundle_script(USER_SCRIPT, ENV), encoding="utf-8")

    seen = run_bundled(script, cwd=tmp_path)

    assert seen["manifest"] == "relay-manifest.json"
    assert "kaggle-relay-runtime-" in seen["runtime"]
    assert json.loads(seen["handoff"]) == ENV.handoff
    assert seen["accelerator"] == "none"
    assert seen["limit"] == "120"


def test_preamble_keeps_deadline_set_by_environment(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(bundle_script(USER_SCRIPT, ENV), encoding="utf-8")

    seen = run_bundled(script, cwd=tmp_path, KAGGLE_RELAY_SESSION_DEADLINE="1900000000")

    assert seen["limit"] is None


def test_bundle_keeps_user_source_lines(tmp_path: Path) -> None:
    bundled = bundle_script(USER_SCRIPT, ENV)

    head, _, tail = bundled.partition("# --- kaggle-relay preamble 0")
    assert head == '"""Train ünïcode digits."""\nfrom __future__ import annotations\n'
    user_rest = USER_SCRIPT.split("annotations\n", 1)[1]
    assert tail.endswith(user_rest)


def test_bundle_without_docstring_puts_preamble_first() -> None:
    bundled = bundle_script("print('hi')\n", ENV)

    assert bundled.startswith("# --- kaggle-relay preamble")
    assert bundled.endswith("print('hi')\n")


def test_bundle_rejects_script_with_syntax_error() -> None:
    with pytest.raises(ConfigError) as caught:
        bundle_script("def broken(:\n", ENV, name="train.py")

    assert "train.py: line 1" in str(caught.value)


def test_bundled_code_carries_run_id() -> None:
    assert bundled_run_id(bundle_script("x = 1\n", ENV)) == ENV.run_id
    assert bundled_run_id("x = 1\n") is None


def test_runtime_archive_is_reproducible() -> None:
    assert runtime_archive() == runtime_archive()


def notebook(with_kernelspec: bool = True) -> str:
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": ["x = 'é'\n"]}
    return json.dumps({"cells": [cell], "metadata": metadata if with_kernelspec else {}, "nbformat": 4, "nbformat_minor": 5})


def test_notebook_gets_preamble_as_first_cell() -> None:
    bundled = json.loads(bundle_notebook(notebook(), ENV))

    assert len(bundled["cells"]) == 2
    assert "".join(bundled["cells"][0]["source"]).startswith("# --- kaggle-relay preamble")
    assert bundled["cells"][1]["source"] == ["x = 'é'\n"]


def test_notebook_without_kernelspec_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        bundle_notebook(notebook(with_kernelspec=False), ENV, name="nb.ipynb")

    assert caught.value.field == "metadata.kernelspec"


def test_push_metadata_pins_handoff_and_writes_booleans() -> None:
    metadata = {
        "id": "alice/digits",
        "enable_internet": "true",
        "dataset_sources": ["alice/digits-handoff", "bob/raw-data", "alice/digits-handoff/1"],
    }

    pushed = push_metadata(
        metadata, handoff_source="alice/digits-handoff/3", handoff_dataset="alice/digits-handoff", accelerator="NvidiaTeslaT4"
    )

    assert pushed["dataset_sources"] == ["bob/raw-data", "alice/digits-handoff/3"]
    assert pushed["is_private"] is True
    assert pushed["enable_internet"] is True
    assert pushed["enable_gpu"] is True
    assert pushed["enable_tpu"] is False
    assert pushed["machine_shape"] == "NvidiaTeslaT4"


def test_push_metadata_defaults_internet_off_and_drops_shape_for_cpu() -> None:
    pushed = push_metadata(
        {"id": "alice/digits", "machine_shape": "NvidiaL4"},
        handoff_source=None,
        handoff_dataset="alice/digits-handoff",
        accelerator="none",
    )

    assert pushed["enable_internet"] is False
    assert pushed["enable_gpu"] is False
    assert "machine_shape" not in pushed
    assert pushed["dataset_sources"] == []


def test_push_metadata_rejects_integer_boolean() -> None:
    with pytest.raises(ConfigError) as caught:
        push_metadata({"enable_internet": 1}, handoff_source=None, handoff_dataset="a/b", accelerator="none")

    assert caught.value.field == "enable_internet"


def test_build_push_folder_writes_code_and_metadata(tmp_path: Path) -> None:
    source = tmp_path / "kernel"
    source.mkdir()
    (source / "train.py").write_text(USER_SCRIPT, encoding="utf-8")
    (source / "kernel-metadata.json").write_text(
        json.dumps({"id": "alice/digits-train", "title": "digits train", "code_file": "train.py",
                    "language": "python", "kernel_type": "script"}),
        encoding="utf-8",
    )

    metadata = build_push_folder(
        source, tmp_path / "push", env=ENV, handoff_dataset="alice/digits-handoff", accelerator="none"
    )

    assert metadata["dataset_sources"] == ["alice/digits-handoff/3"]
    written = json.loads((tmp_path / "push" / "kernel-metadata.json").read_text(encoding="utf-8"))
    assert written == metadata
    assert run_bundled(tmp_path / "push" / "train.py", cwd=tmp_path)["manifest"] == "relay-manifest.json"
    assert (source / "train.py").read_text(encoding="utf-8") == USER_SCRIPT
