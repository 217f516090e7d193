"""Stage ``hold_quiet_hours``: nobody gets a message outside the allowed hours of their time zone."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from engine.core.carriers import INTL
from engine.core.clock import Clock
from engine.core.messages import State
from engine.core.sendwindow import SendWindow, timezone_for
from engine.pipeline.runner import Batch, positions

__all__ = ["OUTSIDE_SEND_WINDOW", "HoldQuietHours"]

OUTSIDE_SEND_WINDOW = "outside_send_window"


class HoldQuietHours:
    """Defers recipients whose local time is outside the window (reason ``outside_send_window``).

    Runs after ``route`` (it reads the ``intl`` carrier). Chinese numbers use the window's own
    time zone (one check per batch); other countries use their country's zone (looked up once per
    country). The runtime pauses a blast while the
    window is closed for Chinese numbers, so in practice this stage defers only international
    recipients asleep while China is awake.
    """

    name = "hold_quiet_hours"

    def __init__(
        self, window: SendWindow, clock: Clock, carrier_windows: Mapping[str, SendWindow] | None = None
    ) -> None:
        self.window = window
        self.clock = clock
        self.carrier_windows = dict(carrier_windows or {})
        """The hours of the gateway each carrier goes through, where that gateway has some."""
        self._windows: dict[str, SendWindow] = {window.timezone: window}

    def _window_in(self, tz: str) -> SendWindow:
        w = self._windows.get(tz)
        if w is None:
            w = self._windows[tz] = dataclasses.replace(self.window, timezone=tz)
        return w

    def process(self, batch: Batch) -> None:
        """Defer the recipients of ``batch`` for whom it is quiet hours now."""
        now = self.clock.time()
        numbers = batch.numbers
        home_open = self.window.is_open(now)
        carriers = batch.carriers  # route ran before: international numbers have carrier "intl"
        intl = positions(carriers, INTL) if INTL in carriers else []
        closed_carriers = {c for c, w in self.carrier_windows.items() if not w.is_open(now)}
        if home_open and not intl and not closed_carriers:
            return
        held: list[int] = []
        details: list[str] = []
        intl_set = set(intl)
        home_detail = f"quiet hours ({self.window}); opens {self.window.describe_opening(now)}"
        for i, n in enumerate(numbers):
            if closed_carriers and carriers[i] in closed_carriers:
                gw = self.carrier_windows[carriers[i]]
                held.append(i)
                details.append(f"the gateway's hours ({gw}); opens {gw.describe_opening(now)}")
            elif i in intl_set:
                w = self._window_in(timezone_for(n))
                if not w.is_open(now):
                    held.append(i)
                    details.append(f"quiet hours ({w}); opens {w.describe_opening(now)}")
            elif not home_open:
                held.append(i)
                details.append(home_detail)
        batch.drop(held, OUTSIDE_SEND_WINDOW, details, state=State.DEFERRED)
