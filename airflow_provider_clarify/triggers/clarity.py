"""Trigger that polls one Clarity report until it is finished, without holding a worker slot."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_clarify.hooks.clarity import ClarityAsyncHook, is_transient
from airflow_provider_clarify.utils.reports import report_outcome
from airflow_provider_clarify.utils.retries import wait_retry_after_or_backoff

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    import aiohttp

#: Statuses of the trigger's one event.
EVENT_STATUSES = ("success", "failed", "error", "timeout")
#: Each wait between two polls is ``poll_interval`` times a random factor in ``[1 - j, 1 + j]``.
POLL_JITTER = 0.2


def poll_waits(poll_interval: float, uniform: Callable[[float, float], float]) -> Iterator[float]:
    """The seconds to wait before each poll: the first up to ``poll_interval``, then ``poll_interval`` ± 20 %.

    Spreads many triggers over time: a triggerer that (re)starts 1,000 of them at once would otherwise send
    their first polls back to back, and equal intervals would keep them in lock step, every answer arriving
    in the same instant and stalling the shared event loop. The mean wait stays ``poll_interval``, so the
    load on the API is unchanged.

    :param poll_interval: the mean seconds between polls.
    :param uniform: ``random.uniform`` or a stand-in: a number between its two arguments.
    """
    yield uniform(0.0, poll_interval)
    while True:
        yield poll_interval * uniform(1.0 - POLL_JITTER, 1.0 + POLL_JITTER)


class ClarityReportTrigger(BaseTrigger):
    """Poll a Clarity report until it succeeds or fails, or the deadline passes; then yield one event.

    The event is ``{"status": "success"|"failed"|"error"|"timeout", "report_id", "message"}`` plus, when the
    report was read, ``"report_status"``, ``"report"`` (the report type) and ``"urls_expire_at"`` -- never
    the download urls. Transient errors (connection errors, time-outs, 5xx) are retried with backoff until
    the deadline; at the deadline the report is read once more before a ``timeout`` event. The deadline is
    absolute (epoch seconds), so a trigger re-created after a triggerer restart keeps it. Nothing is
    cancelled on cleanup: Clarity has no cancel endpoint, and a restart must not lose the report.

    Polls are spread in time (see :func:`poll_waits`): the first one comes after a random wait of up to
    ``poll_interval``, before the connection is looked up or a session opened, and the waits between polls
    vary by ±20 %. The operator and the sensor read the report once before they defer, so a report that is
    ready by then never reaches the trigger. The cost: a report that finished while the triggerer was down
    is noticed up to one ``poll_interval`` after the restart instead of at once -- no later than the next
    regular poll would have noticed it. Waits never run past the deadline.

    :param report_id: the report to poll.
    :param end_time: the deadline, epoch seconds.
    :param org: the organization; ``None`` = the connection's default.
    :param clarity_conn_id: the ``clarity`` connection.
    :param poll_interval: mean seconds between polls (each wait varies by ±20 %).
    :param retry_backoff: first backoff in seconds after a transient error (doubles, capped by
        ``poll_interval``).
    """

    def __init__(
        self,
        *,
        report_id: str,
        end_time: float,
        org: str | None = None,
        clarity_conn_id: str = ClarityAsyncHook.default_conn_name,
        poll_interval: float = 60.0,
        retry_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.report_id = report_id
        self.end_time = float(end_time)
        self.org = org
        self.clarity_conn_id = clarity_conn_id
        self.poll_interval = float(poll_interval)
        self.retry_backoff = float(retry_backoff)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and JSON-only keyword arguments (no secret: the connection is looked up by id)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "report_id": self.report_id,
                "end_time": self.end_time,
                "org": self.org,
                "clarity_conn_id": self.clarity_conn_id,
                "poll_interval": self.poll_interval,
                "retry_backoff": self.retry_backoff,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll, then yield exactly one event."""
        yield TriggerEvent(await self._poll())

    def _event(self, status: str, message: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
        event: dict[str, Any] = {"status": status, "report_id": self.report_id, "message": message}
        if record is not None:
            event["report_status"] = record.get("reportStatus")
            event["report"] = record.get("report")
            event["urls_expire_at"] = record.get("urlsExpireAt")
        return event

    async def _poll(self) -> dict[str, Any]:
        waits = poll_waits(self.poll_interval, random.uniform)
        await self._sleep(next(waits))
        hook = ClarityAsyncHook(clarity_conn_id=self.clarity_conn_id)
        try:
            async with await hook.session() as session:
                return await self._poll_until_done(hook, session, waits)
        except Exception as exc:
            return self._event("error", f"Clarity report {self.report_id}: {type(exc).__name__}: {exc}")

    async def _poll_until_done(
        self, hook: ClarityAsyncHook, session: aiohttp.ClientSession, waits: Iterator[float]
    ) -> dict[str, Any]:
        backoff = wait_retry_after_or_backoff(initial=self.retry_backoff, maximum=self.poll_interval)
        failures = 0
        while True:
            past_deadline = time.time() >= self.end_time
            try:
                record = await hook.get_report(session, self.report_id, self.org)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if past_deadline:
                    return self._event(
                        "timeout",
                        f"Clarity report {self.report_id}: the deadline passed and the last check failed "
                        f"({type(exc).__name__}: {exc})",
                    )
                failures += 1
                delay = backoff.backoff(failures)
                self.log.warning(
                    "Reading Clarity report %s failed (%s: %s); retrying in %.1f s",
                    self.report_id,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                continue
            failures = 0
            event = self._event_for(record, past_deadline=past_deadline)
            if event is not None:
                return event
            await self._sleep(next(waits))

    def _event_for(self, record: dict[str, Any], *, past_deadline: bool) -> dict[str, Any] | None:
        outcome = report_outcome(record)
        status = record.get("reportStatus")
        self.log.info("Clarity report %s: %s (%s)", self.report_id, status, outcome.message)
        if outcome.state == "succeeded":
            return self._event("success", outcome.message, record)
        if outcome.state == "failed":
            return self._event("failed", outcome.message, record)
        if outcome.state == "invalid":
            return self._event("error", f"Clarity report {self.report_id}: {outcome.message}", record)
        if past_deadline:
            return self._event(
                "timeout", f"Clarity report {self.report_id} still {status!r} at the deadline", record
            )
        return None

    async def _sleep(self, seconds: float) -> None:
        # Never past the deadline: the check right after it is the final one.
        await asyncio.sleep(max(min(seconds, self.end_time - time.time()), 0.0))
