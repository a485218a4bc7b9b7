"""Retry building blocks on top of tenacity, shared by the sync (requests) and async (aiohttp) clients.

What is here:

* :func:`is_retryable_status` -- HTTP statuses worth another try (408, 429, 5xx except 501/505).
* :func:`is_requests_transient` / :func:`is_aiohttp_transient` -- "the transport failed, try again"
  (connection refused or reset, time-outs, a body cut short).
* :func:`is_unreceived` -- the narrower test for requests that must not run twice (a Clarity report request
  spends quota): only failures that prove the server never took the request.
* :func:`parse_retry_after` / :func:`retry_after_from_exception` -- read an HTTP ``Retry-After``.
* :class:`wait_retry_after_or_backoff` -- a tenacity wait strategy: the server's ``Retry-After`` when the
  failed attempt carried one, else capped exponential backoff with jitter.
* :func:`retrying` / :func:`async_retrying` -- a ready :class:`tenacity.Retrying` with that wait, a stop
  after ``attempts`` tries, ``reraise=True`` and one warning line per retry.

Exceptions tell the wait strategy about ``Retry-After`` in one of three ways (first match wins): an attribute
``retry_after`` (seconds, ``None`` for "not given"), ``exc.response.headers`` (requests), or ``exc.headers``
(aiohttp's ``ClientResponseError``).

aiohttp is imported only by :func:`is_aiohttp_transient`, so sync clients do not pay for it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

import requests
import tenacity
import urllib3
from tenacity.wait import wait_base

if TYPE_CHECKING:
    from tenacity import RetryCallState

#: Statuses that mean "not now" rather than "never": request time-out, too early, too many requests.
_RETRYABLE_4XX = frozenset({408, 425, 429})
#: 5xx statuses that will not change on a retry.
_PERMANENT_5XX = frozenset({501, 505})
#: Statuses that say the request was not acted on: request time-out (the body never arrived in full), too
#: early, service unavailable. By HTTP semantics a server sends them before doing the work; whether Clarity's
#: load balancer and API keep to that is unconfirmed, so the list is kept to these three. 500, 502 and 504 can
#: come after the work was done and are not on it.
_UNPROCESSED_STATUSES = frozenset({408, 425, 503})


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP response status is worth retrying.

    :param status: the HTTP status code.
    :return: True for 408, 425, 429 and every 5xx except 501 (not implemented) and 505 (version).
    """
    if status in _RETRYABLE_4XX:
        return True
    return 500 <= status <= 599 and status not in _PERMANENT_5XX


def is_requests_transient(exc: BaseException) -> bool:
    """Whether a ``requests`` exception is a transport failure worth retrying.

    Connection errors (refused, reset, DNS, proxy), connect and read time-outs, and bodies cut short
    (``ChunkedEncodingError``) qualify; invalid URLs, TLS failures and too many redirects do not.

    :param exc: the exception raised by ``requests``.
    """
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    return isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError,
    )


def is_unreceived(exc: BaseException) -> bool:
    """Whether a failed ``requests`` call certainly did not reach the server, so sending it again cannot
    make it happen twice.

    True for a connection that could not be opened (refused, DNS, connect time-out) and for an HTTP answer
    whose status says the request was not acted on (408, 425, 503). False for everything after the request
    may have been sent: a reset or a read time-out while waiting, an answer cut short, any other status.

    :param exc: the exception of the failed call; HTTP answers count when the exception has a ``status``
        attribute (the provider's API errors) or a ``response`` (``requests.HTTPError``).
    """
    status = getattr(exc, "status", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in _UNPROCESSED_STATUSES
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
        exc, requests.exceptions.SSLError
    ):
        reason = exc.args[0] if exc.args else None
        # requests wraps urllib3's MaxRetryError, whose ``reason`` is the error of the last try. Refused
        # connections and failed name lookups (NewConnectionError) are a subclass of ConnectTimeoutError.
        reason = getattr(reason, "reason", reason)
        return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)
    return False


def is_aiohttp_transient(exc: BaseException) -> bool:
    """Whether an ``aiohttp`` (or asyncio) exception is a transport failure worth retrying.

    Connection errors (refused, reset, server disconnected), time-outs and truncated payloads qualify;
    TLS errors and invalid URLs do not. (``asyncio.TimeoutError`` is ``TimeoutError`` on Python 3.11+.)

    :param exc: the exception raised while talking through aiohttp.
    """
    import aiohttp

    if isinstance(exc, aiohttp.ClientSSLError):
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` header value.

    :param value: the header value: delay-seconds (``"120"``, fractions accepted) or an HTTP date.
    :param now: the current time as epoch seconds (for tests); defaults to :func:`time.time`.
    :return: seconds (never negative), or ``None`` when the value is missing or unreadable.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def retry_after_from_exception(exc: BaseException | None) -> float | None:
    """The ``Retry-After`` delay an exception carries, if any (see the module docstring for how).

    :param exc: the exception of the failed attempt (``None`` gives ``None``).
    :return: seconds, or ``None`` when the exception carries no usable ``Retry-After``.
    """
    if exc is None:
        return None
    explicit = getattr(exc, "retry_after", None)
    if isinstance(explicit, int | float) and not isinstance(explicit, bool):
        return max(0.0, float(explicit))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(exc, "headers", None)
    if isinstance(headers, Mapping):
        return parse_retry_after(headers.get("Retry-After"))
    return None


class wait_retry_after_or_backoff(wait_base):
    """Wait what the server asked for (``Retry-After``), else capped exponential backoff with jitter.

    Backoff for attempt *n* (1-based): ``b = min(maximum, initial * 2 ** (n - 1))``, then a uniformly
    random wait in ``[b / 2, b]`` ("equal jitter": never zero, and parallel clients spread out).
    A ``Retry-After`` is honoured exactly, capped at ``max_retry_after``.

    :param initial: the first backoff in seconds.
    :param maximum: the largest backoff in seconds.
    :param max_retry_after: the largest ``Retry-After`` honoured, in seconds.
    """

    def __init__(
        self, *, initial: float = 1.0, maximum: float = 60.0, max_retry_after: float = 300.0
    ) -> None:
        if initial < 0 or maximum < 0 or max_retry_after < 0:
            raise ValueError("wait times must not be negative")
        self.initial = initial
        self.maximum = maximum
        self.max_retry_after = max_retry_after

    def backoff(self, attempt: int) -> float:
        """The jittered exponential backoff after attempt number ``attempt`` (1-based).

        :param attempt: how many attempts have been made so far.
        """
        exponent = min(max(attempt - 1, 0), 62)
        cap = min(self.maximum, self.initial * 2.0**exponent)
        return cap / 2 + random.uniform(0, cap / 2)  # noqa: S311 - jitter, not cryptography

    def __call__(self, retry_state: RetryCallState) -> float:
        """Seconds to sleep before the next attempt.

        :param retry_state: tenacity's state of the call being retried.
        """
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = retry_after_from_exception(exc)
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(retry_state.attempt_number)


class WarningLogger(Protocol):
    """Anything with a ``logging``-style ``warning(msg, *args)`` (stdlib and Airflow loggers)."""

    def warning(self, msg: Any, /, *args: Any) -> Any:
        """Log a warning.

        :param msg: the %-format message.
        :param args: its arguments.
        """


def _log_retry(logger: WarningLogger, what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        sleep = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        # Only the exception type and its own text: clients must keep secrets out of exception messages.
        logger.warning(
            "%s failed (attempt %d: %s: %s); retrying in %.1f s",
            what,
            retry_state.attempt_number,
            type(exc).__name__,
            exc,
            sleep,
        )

    return before_sleep


def _retrying_kwargs(
    predicate: Callable[[BaseException], bool],
    *,
    attempts: int,
    wait: wait_base | None,
    logger: WarningLogger | None,
    what: str,
) -> dict[str, Any]:
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    kwargs: dict[str, Any] = {
        "retry": tenacity.retry_if_exception(predicate),
        "stop": tenacity.stop_after_attempt(attempts),
        "wait": wait if wait is not None else wait_retry_after_or_backoff(),
        "reraise": True,
    }
    if logger is not None:
        kwargs["before_sleep"] = _log_retry(logger, what)
    return kwargs


def retrying(
    predicate: Callable[[BaseException], bool],
    *,
    attempts: int,
    wait: wait_base | None = None,
    logger: WarningLogger | None = None,
    what: str = "request",
) -> tenacity.Retrying:
    """A :class:`tenacity.Retrying` that retries exceptions matching ``predicate``.

    The last exception is re-raised unchanged when the attempts run out (``reraise=True``).

    :param predicate: returns True for exceptions worth another attempt.
    :param attempts: the total number of attempts (1 = no retry).
    :param wait: the wait strategy; default :class:`wait_retry_after_or_backoff` with its defaults.
    :param logger: where to log one warning per retry; ``None`` logs nothing.
    :param what: what is being attempted, for the log line (e.g. ``"integration.insert"``).
    """
    return tenacity.Retrying(
        **_retrying_kwargs(predicate, attempts=attempts, wait=wait, logger=logger, what=what)
    )


def async_retrying(
    predicate: Callable[[BaseException], bool],
    *,
    attempts: int,
    wait: wait_base | None = None,
    logger: WarningLogger | None = None,
    what: str = "request",
) -> tenacity.AsyncRetrying:
    """The asyncio twin of :func:`retrying` (sleeps with ``asyncio.sleep``).

    :param predicate: returns True for exceptions worth another attempt.
    :param attempts: the total number of attempts (1 = no retry).
    :param wait: the wait strategy; default :class:`wait_retry_after_or_backoff` with its defaults.
    :param logger: where to log one warning per retry; ``None`` logs nothing.
    :param what: what is being attempted, for the log line.
    """
    return tenacity.AsyncRetrying(
        **_retrying_kwargs(predicate, attempts=attempts, wait=wait, logger=logger, what=what)
    )
