"""Deterministic holdouts: which group a user is in follows from their id and the experiment's salt.

The rule, exactly (so any language or a SQL query can reproduce it):

1. `key = salt + ":" + user_id`, encoded as UTF-8.
2. `bucket` = the first 8 bytes of SHA-256(key) read as an unsigned big-endian integer, 0 ≤ bucket < 2**64.
3. The percentage is taken in millionths of a percent: `units = round(holdout_percent * 1_000_000)`
   (so 10 % is 10_000_000 units out of 100_000_000; that is 10,000 times finer than basis points).
4. The user is in the holdout iff `bucket * 100_000_000 < units * 2**64`, all in exact integer
   arithmetic; otherwise in treatment.

Nothing depends on Python's `hash()`, the process or the machine, so the same id lands in the same
group in every process, after every restart and on every node. Raising the percentage only moves
users from treatment into the holdout, never the other way. A new salt draws a new, independent
holdout: keep one salt for the life of an experiment.

`srm` is the sample-ratio-mismatch check: a chi-square goodness-of-fit test (1 degree of freedom)
of the observed holdout/treatment counts against the configured split. It flags p < 0.001, the
threshold commonly used for SRM: a real experiment of healthy assignment trips it about once in a
thousand analyses, while a broken assignment or a leaky event pipeline trips it quickly.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from typing import Annotated, Literal

import msgspec

from loopwire.settings import Duration

Group = Literal["holdout", "treatment"]

UNITS_PER_PERCENT = 1_000_000  # the percentage's resolution: a millionth of a percent
_SCALE = 100 * UNITS_PER_PERCENT  # units in 100 %
SRM_THRESHOLD = 0.001
DEFAULT_WINDOW = Duration(14 * 86_400.0)


def bucket(user_id: str, salt: str) -> int:
    """The user's position in [0, 2**64) for this salt: the first 8 bytes of SHA-256, big-endian."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@lru_cache(maxsize=64)
def threshold(holdout_percent: float) -> int:
    """The smallest bucket that is *not* in the holdout: `bucket < threshold(p)` means holdout."""
    if not 0 < holdout_percent < 100 or not math.isfinite(holdout_percent):
        raise ValueError(f"holdout_percent must be between 0 and 100 (exclusive), got {holdout_percent!r}")
    units = round(holdout_percent * UNITS_PER_PERCENT)
    if not 0 < units < _SCALE:
        raise ValueError(f"holdout_percent {holdout_percent!r} is finer than a millionth of a percent")
    # bucket * _SCALE < units * 2**64  ⟺  bucket < ceil(units * 2**64 / _SCALE)
    return -(-(units << 64) // _SCALE)


def assign(user_id: str, salt: str, holdout_percent: float) -> Group:
    """`"holdout"` for about `holdout_percent` % of user ids, `"treatment"` for the rest; deterministic."""
    return "holdout" if bucket(user_id, salt) < threshold(holdout_percent) else "treatment"


class Experiment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One holdout experiment as the config declares it.

    ```yaml
    experiments:
      cart_abandon:
        name: Cart abandon journey
        salt: cart_abandon_v1         # a new salt draws a new holdout
        holdout_percent: 10
        audience: cart_abandoners     # who is eligible; leave out for everyone seen
        conversion: Order Completed
        revenue_property: revenue
        window: 14d
    ```
    """

    name: Annotated[str, msgspec.Meta(min_length=1)]
    salt: Annotated[str, msgspec.Meta(min_length=1)]
    holdout_percent: Annotated[float, msgspec.Meta(gt=0, lt=100)]
    audience: str | None = None
    conversion: Annotated[str, msgspec.Meta(min_length=1)] = "Order Completed"
    revenue_property: str = "revenue"
    window: Duration = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        # msgspec checks the Meta constraints when decoding; these also hold for direct construction.
        if not self.name or not self.salt:
            raise ValueError("an experiment needs a non-empty name and salt")
        threshold(self.holdout_percent)
        if not self.window > 0:
            raise ValueError(f"window must be positive, got {self.window!r}")

    def assign(self, user_id: str) -> Group:
        return assign(user_id, self.salt, self.holdout_percent)

    @property
    def window_ms(self) -> int:
        return round(self.window * 1000)


class SrmResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    chi2: float
    p_value: float
    expected_holdout: float
    observed_holdout: int
    mismatch: bool
    threshold: float = SRM_THRESHOLD


def chi2_1dof_sf(chi2: float) -> float:
    """P(X ≥ chi2) for X ~ χ²(1): X = Z², so it is the two-sided normal tail at √chi2."""
    return math.erfc(math.sqrt(chi2 / 2.0)) if chi2 > 0 else 1.0


def srm(holdout: int, treatment: int, holdout_percent: float) -> SrmResult:
    """Chi-square goodness of fit of (holdout, treatment) against the configured split, 1 dof."""
    if holdout < 0 or treatment < 0:
        raise ValueError("counts must not be negative")
    threshold(holdout_percent)  # validates the percentage
    total = holdout + treatment
    expected_h = total * holdout_percent / 100.0
    expected_t = total - expected_h
    if total == 0:
        return SrmResult(0.0, 1.0, 0.0, 0, False)
    chi2 = (holdout - expected_h) ** 2 / expected_h + (treatment - expected_t) ** 2 / expected_t
    p_value = chi2_1dof_sf(chi2)
    return SrmResult(chi2, p_value, expected_h, holdout, p_value < SRM_THRESHOLD)
