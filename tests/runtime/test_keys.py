"""Wrapper prefixes on state dict keys."""

from __future__ import annotations

import pytest
import torch

from kaggle_relay.errors import CheckpointInvalidError
from kaggle_relay.runtime.keys import detect_key_prefix, strip_key_prefix


@pytest.mark.parametrize(
    ("keys", "prefix"),
    [
        (["fc.weight", "fc.bias"], ""),
        (["module.fc.weight", "module.fc.bias"], "module."),
        (["_orig_mod.fc.weight"], "_orig_mod."),
        (["module._orig_mod.fc.weight", "module._orig_mod.fc.bias"], "module._orig_mod."),
        (["_orig_mod.module.fc.weight"], "_orig_mod.module."),
        (["module.module.fc.weight"], "module.module."),
        ([], ""),
    ],
)
def test_prefix_carried_by_every_key(keys: list[str], prefix: str) -> None:
    found = detect_key_prefix(keys)
    assert not found.mismatch
    assert found.prefix == prefix


def test_mixed_keys_are_a_mismatch() -> None:
    found = detect_key_prefix(["module.fc.weight", "head.bias"])
    assert found.mismatch
    assert "'head.bias' does not" in str(found)


def test_nested_mix_is_a_mismatch() -> None:
    found = detect_key_prefix(["module._orig_mod.a", "module.b"])
    assert found.mismatch
    assert found.prefix == "module."


def test_strip_mixed_keys_raises() -> None:
    with pytest.raises(CheckpointInvalidError):
        strip_key_prefix({"module.fc.weight": 1, "head.bias": 2})


def test_strip_plain_dict_without_torch() -> None:
    assert strip_key_prefix({"module._orig_mod.a": 1, "module._orig_mod.b": 2}) == {"a": 1, "b": 2}
    untouched = {"a": 1}
    assert strip_key_prefix(untouched) is untouched


def test_stripped_state_dict_loads_into_model() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    wrapped = torch.nn.DataParallel(model)
    state = wrapped.state_dict()
    assert next(iter(state)).startswith("module.")
    stripped = strip_key_prefix(state)
    assert set(stripped._metadata) == {"", "0"}
    torch.nn.Sequential(torch.nn.Linear(3, 2)).load_state_dict(stripped)


def test_explicit_prefix_must_be_on_every_key() -> None:
    with pytest.raises(CheckpointInvalidError):
        strip_key_prefix({"module.a": 1, "b": 2}, prefix="module.")
