"""relay.toml parsing: valid files load, invalid ones name the file, the field and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kaggle_relay.errors import ConfigError
from kaggle_relay.relay.config import load_config

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

MINIMAL = """
[[chain]]
name = "digits"
kernel = "kernel"
dataset = "alice/digits-handoff"
"""


def write_project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "kernel").mkdir(exist_ok=True)
    (tmp_path / "kernel" / "kernel-metadata.json").write_text("{}", encoding="utf-8")
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write_project(tmp_path, text))
    return caught.value


def test_template_config_loads(tmp_path: Path) -> None:
    shutil.copytree(TEMPLATES, tmp_path / "project")

    config = load_config(tmp_path / "project" / "relay.toml")

    chain = config.chain[0]
    assert chain.name == "digits"
    assert chain.kernel_is_folder
    assert chain.metric == "val_acc"
    assert chain.mode == "max"
    assert config.state_dir == (tmp_path / "project" / ".relay").resolve()


def test_minimal_config_uses_defaults(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path, MINIMAL))

    chain = config.chain[0]
    assert chain.accelerator == "none"
    assert chain.session_limit == 43200
    assert chain.stop.done_flag is True
    assert chain.retry is None
    assert config.quota.gpu_hours == 30


def test_tpu_chain_gets_nine_hour_limit(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path, MINIMAL + 'accelerator = "TpuV5E8"\n'))

    assert config.chain[0].session_limit == 32400
    assert config.chain[0].accelerator_kind == "tpu"


def test_missing_file_names_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "relay.toml")

    assert "not found" in str(caught.value)
    assert "kaggle-relay init" in caught.value.hint


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[[chain]\nname = ")

    assert "relay.toml" in str(error)
    assert "invalid TOML" in str(error)


def test_metric_without_mode_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + 'metric = "val_loss"\n')

    assert "mode" in str(error)
    assert "no direction is assumed" in str(error)


def test_unknown_accelerator_names_field_and_choices(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + 'accelerator = "T4"\n')

    assert error.field == "chain[0].accelerator"
    assert "NvidiaTeslaT4" in error.hint


def test_misspelt_setting_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[chain.stop]\nmax_dayz = 3\n")

    assert error.field == "chain[0].stop.max_dayz"
    assert "unknown setting" in str(error)


def test_versioned_dataset_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL.replace("alice/digits-handoff", "alice/digits-handoff/3"))

    assert error.field == "chain[0].dataset"
    assert "'alice/digits-handoff'" in str(error)


def test_web_form_dataset_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL.replace("alice/digits-handoff", "alice/digits-handoff/versions/3"))

    assert "versions" in str(error)


def test_session_timeout_above_limit_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "session_timeout = 50000\n")

    assert error.field == "chain[0].session_timeout"
    assert "43200" in error.hint


def test_kernel_folder_without_metadata_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL.replace('"kernel"', '"elsewhere"'))

    assert error.field == "kernel"
    assert "kernel-metadata.json" in str(error)


def test_kernel_slug_is_accepted(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path, MINIMAL.replace('"kernel"', '"alice/digits-train"')))

    assert not config.chain[0].kernel_is_folder


def test_duplicate_chain_names_are_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + MINIMAL)

    assert "repeated: digits" in str(error)


def test_no_chain_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[quota]\ngpu_hours = 3\n")

    assert error.field == "chain"
    assert "[[chain]]" in error.hint


def test_retry_policy_is_validated(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[chain.retry]\nmax_attempts = 0\n")

    assert error.field == "chain[0].retry.max_attempts"


def test_environment_endpoint_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_project(tmp_path, 'endpoint = "http://127.0.0.1:9"\n' + MINIMAL))
    assert config.chain[0].resolved_endpoint() == "http://127.0.0.1:9"

    monkeypatch.setenv("KAGGLE_RELAY_API_ENDPOINT", "http://127.0.0.1:10")
    assert config.chain[0].resolved_endpoint() == "http://127.0.0.1:10"


def test_select_unknown_chain_lists_known(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path, MINIMAL))

    with pytest.raises(ConfigError) as caught:
        config.select("other")

    assert "digits" in caught.value.hint


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('metric = "val_loss"\n', 'mode = "min" or mode = "max"'),
        ("[chain.stop]\ntarget = 0.9\n", "metric = "),
    ],
)
def test_chain_rule_errors_give_their_own_fix(tmp_path: Path, extra: str, expected: str) -> None:
    error = config_error(tmp_path, MINIMAL + extra)

    assert expected in error.hint
    assert "[[chain]]" not in error.hint


def test_repeated_chain_names_suggest_renaming(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + MINIMAL)

    assert "repeated: digits" in str(error)
    assert "rename" in error.hint
