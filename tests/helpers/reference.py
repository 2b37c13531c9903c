"""The vendors' reference fixtures (`../shared/reference/fixtures`, beside the checkout), copied into
`tests/reference` so that a clone anywhere tests the same; `tests/test_reference_copy.py` keeps the
copy equal to the original wherever the original is present."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "reference"
ORIGINAL = Path(__file__).resolve().parents[3] / "shared" / "reference" / "fixtures"
