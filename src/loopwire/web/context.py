"""What every console page and action is given: the runtime, the sign-in, the sampled trend, the
lift reports and the last connection test of each destination."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loopwire.destinations.amplitude.testing import ConnectionResult
from loopwire.web.auth import Auth
from loopwire.web.lift_cache import LiftCache
from loopwire.web.trend import Trend

if TYPE_CHECKING:
    from loopwire.app import Runtime


@dataclass
class Console:
    runtime: Runtime
    auth: Auth
    trend: Trend
    lifts: LiftCache
    tests: dict[str, tuple[int, ConnectionResult]] = field(default_factory=dict)  # name → (when ms, result)

    def now_ms(self) -> int:
        return int(self.runtime.clock() * 1000)
