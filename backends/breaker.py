"""The request path's circuit breaker: a stage stops at once when its endpoint cannot answer.

Retries fix what passes (429, 5xx, timeouts, a dropped connection). They cannot fix a refused API
key, an unknown model, nothing listening at the URL, or a dead engine: every request then fails
the same way, and a stage of 20,000 requests would spend hours failing them one by one (each with
its retries) and then look finished. The breaker counts consecutive attempts that failed for such
a cause (`BackendError.fatal`); any answer resets the count. Once `window` attempts in a row have
failed that way it trips: no request or retry starts any more, and the stage stops with an
EndpointError naming the endpoint and the cause. A failure the endpoint itself calls final
(`BackendError.final`: vLLM's engine died, and its server is shutting down) trips it at once. Everything answered before stays journaled, so
the same command resumes once the endpoint is fixed.

The window is at least the endpoint's `max_in_flight` (`window_for`): the requests in flight when
it trips were already sent, so a tripped stage has sent at most twice its window of requests.
"""

from __future__ import annotations

from collections import Counter

from backends.base import BackendError
from core.errors import EndpointError


def window_for(breaker_window: int, max_in_flight: int) -> int:
    """The breaker's window for an endpoint: its `breaker_window`, and never below one full window
    of requests in flight."""
    return max(breaker_window, max_in_flight)


class CircuitBreaker:
    """Counts consecutive fatal failures of one endpoint (see the module's docstring)."""

    def __init__(self, window: int, label: str):
        self.window = max(1, window)
        self.label = label
        self.streak = 0
        self.causes: Counter = Counter()
        self.last: str | None = None
        self.tripped = False
        self.final = False

    def success(self) -> None:
        """An answer: the endpoint works, whatever failed before."""
        if not self.tripped:
            self.streak = 0
            self.causes.clear()

    def failure(self, exc: BackendError) -> None:
        """A failed attempt; only fatal causes count (a 503 or a timeout says nothing either way)."""
        if not exc.fatal or self.tripped:
            return
        self.streak += 1
        self.causes[exc.kind] += 1
        self.last = str(exc)
        self.final = exc.final
        if self.streak >= self.window or exc.final:  # final: the endpoint said so itself
            self.tripped = True

    def failed_for_good(self, error: str) -> None:
        """A failure reported without a BackendError (a batch's line): counted by its text."""
        self.failure(BackendError(error, retryable=False, fatal=True))

    def check(self) -> None:
        """Raise the breaker's EndpointError once it has tripped."""
        if self.tripped:
            raise self.error()

    def error(self) -> EndpointError:
        resume = ("Every reply received before is kept in the run's journals: fix the endpoint and rerun the "
                  "same command to resume.")
        if self.final:
            return EndpointError(f"{self.label}: stopped: the endpoint can answer nothing more; {self.last}. {resume}")
        causes = ", ".join(f"{kind} x{count}" for kind, count in self.causes.most_common())
        return EndpointError(
            f"{self.label}: stopped after {self.streak} attempts in a row failed for a cause that retrying "
            f"cannot fix ({causes}); last: {self.last}. {resume}")
