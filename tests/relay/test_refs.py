from __future__ import annotations

import pytest

from kaggle_relay.errors import ConfigError
from kaggle_relay.relay.refs import DatasetRef, KernelRef


def test_kernel_ref_parses_and_prints_back() -> None:
    ref = KernelRef.parse("alice/train-digits")
    assert ref.owner == "alice"
    assert ref.slug == "train-digits"
    assert ref.version is None
    assert str(ref) == "alice/train-digits"


def test_kernel_ref_with_version_prints_version() -> None:
    ref = KernelRef.parse("alice/train-digits/7")
    assert ref.version == 7
    assert str(ref) == "alice/train-digits/7"
    assert str(ref.unversioned().with_version(8)) == "alice/train-digits/8"


def test_dataset_ref_rejects_web_form_with_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        DatasetRef.parse("alice/relay-handoff/versions/3")
    assert "versions" in str(caught.value)
    assert caught.value.hint == "write alice/relay-handoff/3"


@pytest.mark.parametrize(
    "text",
    [
        "alice",
        "alice/",
        "/slug",
        "alice/relay handoff",
        "alice/Relay-Handoff",
        "alice/-handoff",
        "alice/relay--handoff",
        "alice/relay-handoff/0",
        "alice/relay-handoff/v3",
        "alice/relay-handoff/3/4",
    ],
)
def test_dataset_ref_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ConfigError):
        DatasetRef.parse(text)


def test_kernel_ref_rejects_slug_under_five_characters() -> None:
    with pytest.raises(ConfigError, match="at least 5"):
        KernelRef.parse("alice/abcd")


def test_require_version_names_the_reference() -> None:
    with pytest.raises(ValueError, match="alice/train-digits"):
        KernelRef.parse("alice/train-digits").require_version()
    assert KernelRef.parse("alice/train-digits/2").require_version() == 2


def test_refs_are_hashable_and_compare_by_value() -> None:
    assert DatasetRef.parse("bob/data-set/1") == DatasetRef("bob", "data-set", 1)
    assert len({DatasetRef.parse("bob/data-set"), DatasetRef("bob", "data-set")}) == 1
