"""tests/reference is a copy of the shared reference fixtures: where the original is beside the
checkout, the copy holds the same files with the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.reference import FIXTURES, ORIGINAL


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_copy_is_not_empty() -> None:
    names = _files(FIXTURES)
    assert any(name.startswith("customerio/webhooks/") for name in names)
    assert any(name.startswith("amplitude/") for name in names)
    assert any(name.startswith("segment/") for name in names)


@pytest.mark.skipif(not ORIGINAL.is_dir(), reason="no ../shared/reference beside this checkout")
def test_the_copy_equals_the_original() -> None:
    copy, original = _files(FIXTURES), _files(ORIGINAL)
    assert sorted(copy) == sorted(original)
    assert [name for name in original if copy[name] != original[name]] == []
