"""Hook for the Clarify JSON-RPC API (clarify.io): insert time series and save signal metadata.

Transport rules (reference/clarify-api.md):

* One ``requests.Session`` per hook; every call is ``POST <api url>rpc`` with ``X-API-Version`` (default
  ``1.1``) and a connect/read time-out.
* Authentication: Basic (integration id + password) or OAuth 2.0 client credentials (``client_id`` in the
  extra, or the whole credentials file in the extra ``credentials``). Access tokens are cached until shortly
  before they expire; an HTTP 401 gets one new token and one more try.
* Retries (tenacity, exponential backoff with jitter, ``Retry-After`` honoured): connection errors, time-outs,
  HTTP 408/429/5xx, and the JSON-RPC codes -32015 (try again), -32603 (internal error) and -32000 (server
  error). Never retried: invalid params (-32602), invalid request (-32600), method not found (-32601),
  forbidden (-32003), parse error (-32700), or any other 4xx. Inserts are idempotent (a value re-sent for
  the same signal and time replaces the stored one), so retrying a request -- or re-running a whole insert
  after a failure -- is safe.
* Pacing: Clarify allows about one request per second per method; the hook waits for each method's next
  slot on the client side (``requests_per_second``, default 1; ``None`` turns pacing off).
* Pipelined inserts: one background thread sends the insert requests, in order, while the caller's thread
  pulls the next frames and builds the next bodies, so the round trip and the wait for the pacing slot
  overlap that work. At most four bodies wait while one is in flight; the first failure stops both.
* Secrets (password, client secret, access token, the Basic credentials) are registered with Airflow's
  secrets masker and are never put into log lines or exception messages; text that comes back from the
  server is scrubbed of them too.
"""

from __future__ import annotations

import base64
import collections
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import msgspec
import requests
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from airflow_provider_clarify import __version__
from airflow_provider_clarify.exceptions import ClarifyRPCError
from airflow_provider_clarify.utils.forms import connection_form_widgets, ui_field_behaviour
from airflow_provider_clarify.utils.frames import Frame, format_us, to_frame, validate_key
from airflow_provider_clarify.utils.payload import (
    DEFAULT_REQUEST_BYTES,
    INSERT_METHOD,
    MAX_REQUEST_BYTES,
    SAVE_SIGNALS_METHOD,
    InsertRequest,
    check_budget,
    insert_requests,
    merge_signals_by_input,
    save_signals_requests,
)
from airflow_provider_clarify.utils.retries import (
    is_requests_transient,
    is_retryable_status,
    parse_retry_after,
    retrying,
    wait_retry_after_or_backoff,
)
from airflow_provider_clarify.utils.signals import HASH_ANNOTATION, save_view, with_hash
from airflow_provider_clarify.utils.urls import join_url, validate_base_url

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_API_URL = "https://api.clarify.io/v1/"
DEFAULT_API_VERSION = "1.1"
DEFAULT_TIMEOUT = 30.0
#: JSON-RPC error codes that mean "try again later".
RETRYABLE_RPC_CODES = frozenset({-32015, -32603, -32000})
#: Code of a :class:`ClarifyRPCError` raised when the transport failed for good (no HTTP answer).
TRANSPORT_ERROR_CODE = 0
_INTEGRATION_PATTERN = re.compile(r"[a-v0-9]{20}", re.ASCII)
#: Tokens are renewed this long before they expire (or at 10 % of their lifetime when that is shorter).
_TOKEN_MARGIN = 60.0
_MESSAGE_MAX = 300
#: Insert requests that may wait while one is in flight (each at most ``max_request_bytes``). The report
#: pipeline releases requests in bursts (several sources fill up together); a queue of a few keeps it
#: parsing during a burst instead of waiting, so the next burst is ready before the queue runs dry.
_MAX_WAITING = 4
_MAX_RETRY_AFTER = 300.0

#: (API URL, integration) -> input key -> content hash of the last save view this process saved.
_SAVED_HASHES: dict[tuple[str, str], dict[str, str]] = {}
_SAVED_HASHES_LOCK = threading.Lock()


@dataclass(frozen=True)
class ClarifySettings:
    """What the hook reads from its connection.

    :param api_url: the API base URL, ending in ``/``.
    :param integration_id: the integration id (20 characters of ``[a-v0-9]``).
    :param auth: ``"basic"`` or ``"oauth"``.
    :param secret: the Basic-auth password or the OAuth client secret.
    :param client_id: the OAuth client id (OAuth only).
    :param api_version: sent as ``X-API-Version``.
    :param timeout: HTTP time-out per request, in seconds.
    """

    api_url: str
    integration_id: str
    auth: Literal["basic", "oauth"]
    secret: str = field(repr=False)
    client_id: str | None
    api_version: str
    timeout: float


@dataclass(frozen=True)
class InsertSummary:
    """What an insert did.

    :param signals: ``signalsByInput`` merged over all requests: key -> ``{"id", "created"}``.
    :param requests: how many insert requests were sent.
    :param points: how many values (non-null) were sent.
    :param duplicates: input rows merged because they repeated an instant (see :mod:`.utils.frames`).
    """

    signals: dict[str, dict[str, Any]]
    requests: int
    points: int
    duplicates: int = 0


@dataclass
class _InsertProgress:
    """What an insert has read and stored so far (for the summary and for failure messages)."""

    signals: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    points: int = 0
    frames: int = 0
    read_points: int = 0
    duplicates: int = 0
    first_us: int | None = None
    last_us: int | None = None

    def add(self, request: InsertRequest) -> None:
        self.requests += 1
        self.points += request.points
        self.first_us = request.start_us if self.first_us is None else min(self.first_us, request.start_us)
        self.last_us = request.end_us if self.last_us is None else max(self.last_us, request.end_us)

    def stored(self) -> str:
        """E.g. ``2 earlier request(s) were stored: 1200 of 3000 values of 1 series between ... and ...``."""
        read = f"{self.read_points} values"
        if self.frames > 1:
            read += f" read so far (from {self.frames} frames)"
        if not self.requests:
            return f"nothing was stored (0 of {read})"
        return (
            f"{self.requests} earlier request(s) were stored: {self.points} of {read} of "
            f"{len(self.signals)} series between {format_us(self.first_us or 0)} and "
            f"{format_us(self.last_us or 0)}"
        )


class _Cancelled(Exception):
    """A pipelined insert is being abandoned (the caller's thread is unwinding): no further attempt."""


class _InsertSender:
    """Sends insert requests in order from one background thread while the caller builds the next ones.

    The caller hands requests over with :meth:`put`; at most :data:`_MAX_WAITING` wait while one is in
    flight. The first failure stops the thread and drops the waiting requests (they were never sent); the
    caller learns of it at its next :meth:`put` or at :meth:`stop`, and then raises it from its own thread.

    :param send: sends one request and records it as stored (runs on the background thread).
    """

    def __init__(self, send: Callable[[InsertRequest], None]) -> None:
        self._send = send
        self._changed = threading.Condition()
        self._waiting: collections.deque[InsertRequest] = collections.deque()
        self._closing = False
        self.handed = 0
        self.failure: tuple[BaseException, int, InsertRequest] | None = None
        self._thread = threading.Thread(target=self._run, name="clarify-insert-sender")
        self._thread.start()

    def put(self, request: InsertRequest) -> bool:
        """Hand over the next request (waits while the queue is full); False if sending has failed.

        :param request: the next request, in order.
        """
        with self._changed:
            while len(self._waiting) >= _MAX_WAITING and self.failure is None:
                self._changed.wait()
            if self.failure is not None:
                return False
            self._waiting.append(request)
            self.handed += 1
            self._changed.notify_all()
            return True

    def stop(self, *, cancel: bool = False) -> None:
        """End the thread once the waiting requests are sent (or, with ``cancel``, dropped) and join it.

        :param cancel: drop the waiting requests instead of sending them.
        """
        with self._changed:
            self._closing = True
            if cancel:
                self._waiting.clear()
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        number = 0
        while True:
            with self._changed:
                while not self._waiting and not self._closing:
                    self._changed.wait()
                if not self._waiting:
                    return
                request = self._waiting.popleft()
                self._changed.notify_all()
            number += 1
            try:
                self._send(request)
            except BaseException as exc:  # handed to the caller's thread, which raises it
                with self._changed:
                    self.failure = (exc, number, request)
                    self._waiting.clear()
                    self._changed.notify_all()
                return
            del request  # its body is not kept once sent


class ClarifyHook(BaseHook):
    """Talk to Clarify's JSON-RPC API: :meth:`insert`, :meth:`save_signals`, :meth:`rpc`.

    Nothing is read or sent when the hook is created; the connection is resolved on first use.

    :param clarify_conn_id: the Airflow connection (type ``clarify``).
    :param requests_per_second: client-side pacing per JSON-RPC method (Clarify allows 1/s);
        ``None`` or 0 turns pacing off.
    :param max_request_bytes: byte budget of one request body (default 4 MiB, at most 8 MiB).
    :param retry_limit: how many times a failed request is retried (0 = never).
    :param retry_delay: the first backoff in seconds (doubling, with jitter).
    :param max_retry_delay: the largest backoff in seconds (a server's ``Retry-After`` is honoured
        as sent, up to 5 minutes).
    :param timeout: HTTP time-out per request in seconds; default the connection's extra ``timeout`` or 30.
    """

    conn_name_attr = "clarify_conn_id"
    default_conn_name = "clarify_default"
    conn_type = "clarify"
    hook_name = "Clarify"

    def __init__(
        self,
        clarify_conn_id: str = default_conn_name,
        *,
        requests_per_second: float | None = 1.0,
        max_request_bytes: int = DEFAULT_REQUEST_BYTES,
        retry_limit: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.clarify_conn_id = clarify_conn_id
        self.requests_per_second = requests_per_second
        self.max_request_bytes = max_request_bytes
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.timeout = timeout
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._next_slot: dict[str, float] = {}
        self._cancel: threading.Event | None = None  # during a pipelined insert; set when it is abandoned
        self._secrets: set[str] = set()
        self._created_keys: set[str] = set()

    # -- Airflow connection form (Airflow 3.1; 3.2+ reads the provider info) ----------------------------
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the ``clarify`` connection form (from the provider info)."""
        return connection_form_widgets(cls.conn_type)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the ``clarify`` connection form."""
        return ui_field_behaviour(cls.conn_type)

    # -- connection ---------------------------------------------------------------------------------
    @cached_property
    def settings(self) -> ClarifySettings:
        """The connection, read and checked once (raises :class:`ValueError` naming the bad field)."""
        settings = self._read_connection(self.get_connection(self.clarify_conn_id))
        self._remember_secret(settings.secret)
        if settings.auth == "basic":
            self._remember_secret(self._basic_token(settings))
        return settings

    def _read_connection(self, conn: Connection) -> ClarifySettings:
        conn_id = self.clarify_conn_id
        extra = conn.extra_dejson
        timeout = self.timeout if self.timeout is not None else extra.get("timeout") or DEFAULT_TIMEOUT
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise ValueError(f"connection {conn_id!r} extra 'timeout' must be a number of seconds") from None
        if timeout <= 0:
            raise ValueError(f"connection {conn_id!r} extra 'timeout' must be positive")
        api_version = str(extra.get("api_version") or DEFAULT_API_VERSION)
        credentials = extra.get("credentials")
        if credentials:
            return self._read_credentials_file(credentials, timeout=timeout, api_version=api_version)
        api_url = validate_base_url(conn.host or DEFAULT_API_URL, field="host", conn_id=conn_id)
        integration = self._check_integration(conn.login, f"connection {conn_id!r} field 'login'")
        if not conn.password:
            raise ValueError(
                f"connection {conn_id!r} field 'password' is empty (the Basic-auth password or the OAuth "
                "client secret)"
            )
        client_id = extra.get("client_id") or None
        return ClarifySettings(
            api_url=api_url,
            integration_id=integration,
            auth="oauth" if client_id else "basic",
            secret=conn.password,
            client_id=str(client_id) if client_id else None,
            api_version=api_version,
            timeout=timeout,
        )

    def _read_credentials_file(self, raw: Any, *, timeout: float, api_version: str) -> ClarifySettings:
        where = f"connection {self.clarify_conn_id!r} extra 'credentials'"
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ValueError(f"{where} is not valid JSON") from None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("credentials"), Mapping):
            raise ValueError(f"{where} must be Clarify's credentials file: apiUrl, integration, credentials")
        inner = raw["credentials"]
        secret = inner.get("clientSecret")
        if isinstance(secret, str) and secret:
            self._remember_secret(secret)
        api_url = validate_base_url(str(raw.get("apiUrl") or DEFAULT_API_URL), field="credentials.apiUrl")
        integration = self._check_integration(raw.get("integration"), f"{where} field 'integration'")
        kind = inner.get("type", "client-credentials")
        client_id = inner.get("clientId")
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"{where} field 'credentials.clientSecret' is missing")
        if kind == "client-credentials":
            if not isinstance(client_id, str) or not client_id:
                raise ValueError(f"{where} field 'credentials.clientId' is missing")
            auth: Literal["basic", "oauth"] = "oauth"
        elif kind == "basic-auth":
            # The Go SDK accepts this type; which field holds the password is unconfirmed -- we read
            # clientSecret as the password of the integration id.
            auth, client_id = "basic", None
        else:
            raise ValueError(f"{where} field 'credentials.type' must be client-credentials or basic-auth")
        return ClarifySettings(
            api_url=api_url,
            integration_id=integration,
            auth=auth,
            secret=secret,
            client_id=client_id,
            api_version=api_version,
            timeout=timeout,
        )

    @staticmethod
    def _check_integration(value: Any, where: str) -> str:
        if not isinstance(value, str) or not _INTEGRATION_PATTERN.fullmatch(value):
            raise ValueError(f"{where} must be a Clarify integration id (20 characters of a-v and 0-9)")
        return value

    def _integration(self, integration_id: str | None) -> str:
        if integration_id is None:
            return self.settings.integration_id
        return self._check_integration(integration_id, "integration_id")

    def _remember_secret(self, secret: str | None) -> None:
        if secret:
            self._secrets.add(secret)
            mask_secret(secret)

    def _scrub(self, text: str) -> str:
        """Server-provided text, shortened and with every known secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."

    @staticmethod
    def _basic_token(settings: ClarifySettings) -> str:
        return base64.b64encode(f"{settings.integration_id}:{settings.secret}".encode()).decode("ascii")

    # -- HTTP ---------------------------------------------------------------------------------------
    def get_conn(self) -> requests.Session:
        """The hook's ``requests.Session`` (created once, with the JSON-RPC headers set)."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "X-API-Version": self.settings.api_version,
                "User-Agent": f"airflow-provider-clarify/{__version__}",
            }
        )
        return session

    @property
    def _timeouts(self) -> tuple[float, float]:
        timeout = self.settings.timeout
        return (min(timeout, 10.0), timeout)

    def _retrying(self, what: str) -> Any:
        wait = wait_retry_after_or_backoff(
            initial=self.retry_delay, maximum=self.max_retry_delay, max_retry_after=_MAX_RETRY_AFTER
        )
        policy = retrying(
            self._is_retryable, attempts=self.retry_limit + 1, wait=wait, logger=self.log, what=what
        )
        return policy.copy(sleep=self._sleep)

    @staticmethod
    def _is_retryable(exc: BaseException) -> bool:
        if isinstance(exc, ClarifyRPCError):
            return exc.code in RETRYABLE_RPC_CODES or (
                100 <= exc.code <= 599 and is_retryable_status(exc.code)
            )
        return is_requests_transient(exc)

    def _authorization(self) -> str:
        settings = self.settings
        if settings.auth == "basic":
            return "Basic " + self._basic_token(settings)
        if self._token is None or time.monotonic() >= self._token_renew_at:
            self._fetch_token()
        return f"Bearer {self._token}"

    def _fetch_token(self) -> None:
        settings = self.settings
        url = join_url(settings.api_url, "oauth/token")
        form = {
            "grant_type": "client_credentials",
            "client_id": settings.client_id or "",
            "client_secret": settings.secret,
            "audience": settings.api_url,
        }

        def request_token() -> dict[str, Any]:
            response = self._session.post(
                url,
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=self._timeouts,
            )
            if response.status_code != 200:
                raise self._http_error(response, "OAuth token request")
            try:
                body = response.json()
            except ValueError:
                raise ClarifyRPCError(
                    code=502, message="OAuth token response is not JSON", method="oauth/token"
                ) from None
            if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise ClarifyRPCError(
                    code=502, message="OAuth token response has no access_token", method="oauth/token"
                )
            return body

        started = time.monotonic()
        try:
            body = self._retrying("OAuth token request")(request_token)
        except requests.RequestException as exc:
            raise self._transport_error(exc, "oauth/token") from exc
        token = body["access_token"]
        self._remember_secret(token)
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._token = token
        self._token_renew_at = started + lifetime - min(_TOKEN_MARGIN, lifetime / 10)
        self.log.info("Obtained a Clarify access token (valid for %.0f s)", lifetime)

    def _http_error(self, response: requests.Response, what: str) -> ClarifyRPCError:
        """A :class:`ClarifyRPCError` for a non-200 answer; ``code`` is the HTTP status."""
        status = response.status_code
        detail = ""
        try:
            body = response.json()
        except ValueError:
            detail = response.text.strip()
        else:
            if isinstance(body, Mapping):
                parts = [body.get(k) for k in ("error", "error_description", "message")]
                detail = "; ".join(
                    ", ".join(map(str, p)) if isinstance(p, list) else str(p) for p in parts if p
                )
        message = f"{what}: HTTP {status} {response.reason or ''}".rstrip()
        if detail:
            message += f": {self._scrub(detail)}"
        return ClarifyRPCError(
            code=status,
            message=message,
            method=what,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _transport_error(self, exc: requests.RequestException, method: str) -> ClarifyRPCError:
        attempts = self.retry_limit + 1
        return ClarifyRPCError(
            code=TRANSPORT_ERROR_CODE,
            message=f"no answer after {attempts} attempt(s): {type(exc).__name__}: {self._scrub(str(exc))}",
            method=method,
        )

    def _pace(self, method: str) -> None:
        """Wait for ``method``'s next slot (at most ``requests_per_second`` requests per second)."""
        if not self.requests_per_second:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot.get(method, now))
        if slot > now:
            self._sleep(slot - now)
            if self._abandoned():
                raise _Cancelled(f"{method} abandoned while waiting for its slot")
        self._next_slot[method] = slot + 1.0 / self.requests_per_second

    def _sleep(self, seconds: float) -> None:
        """Sleep (pacing, backoff); cut short when a pipelined insert is abandoned."""
        if self._cancel is None:
            time.sleep(seconds)
        else:
            self._cancel.wait(seconds)

    def _abandoned(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def _post_once(self, body: bytes) -> requests.Response:
        return self._session.post(
            join_url(self.settings.api_url, "rpc"),
            data=body,
            headers={"Authorization": self._authorization()},
            timeout=self._timeouts,
        )

    def _attempt(self, method: str, body: bytes) -> dict[str, Any]:
        if self._abandoned():
            raise _Cancelled(f"{method} abandoned before another attempt")
        self._pace(method)
        response = self._post_once(body)
        if response.status_code == 401 and self.settings.auth == "oauth":
            self.log.info("Clarify rejected the access token (HTTP 401); requesting a new one")
            self._token = None
            self._pace(method)
            response = self._post_once(body)
        if response.status_code != 200:
            raise self._http_error(response, method)
        try:
            payload = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            # An HTTP 200 without a JSON body is a broken answer from something in between: retryable.
            raise ClarifyRPCError(code=502, message="the response is not valid JSON", method=method) from None
        if not isinstance(payload, dict):
            raise ClarifyRPCError(code=502, message="the response is not a JSON-RPC object", method=method)
        error = payload.get("error")
        if error is not None:
            raise self._rpc_error(error, method)
        result = payload.get("result")
        if not isinstance(result, dict):
            raise ClarifyRPCError(
                code=502, message="the response has neither result nor error", method=method
            )
        return result

    def _rpc_error(self, error: Any, method: str) -> ClarifyRPCError:
        if not isinstance(error, Mapping):
            return ClarifyRPCError(code=502, message=f"malformed error object: {self._scrub(str(error))}")
        raw_data = error.get("data")
        data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
        params = data.get("params") if isinstance(data.get("params"), Mapping) else None
        trace = data.get("trace")
        code = error.get("code")
        return ClarifyRPCError(
            code=code if isinstance(code, int) else -32603,
            message=self._scrub(str(error.get("message") or "unknown error")),
            params=json.loads(self._scrub(json.dumps(params))) if params else None,
            trace=str(trace) if trace is not None else None,
            method=method,
        )

    def _call(self, method: str, body: bytes) -> dict[str, Any]:
        """Send one request body with pacing and retries; return the JSON-RPC ``result``."""
        try:
            return self._retrying(method)(self._attempt, method, body)
        except requests.RequestException as exc:
            raise self._transport_error(exc, method) from exc

    # -- public API ---------------------------------------------------------------------------------
    def rpc(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call any JSON-RPC method and return its ``result`` object.

        :param method: e.g. ``integration.insert``.
        :param params: the named parameters.
        :raises ClarifyRPCError: for an error answer (after retries where retrying makes sense).
        """
        body = msgspec.json.encode(
            {"jsonrpc": "2.0", "method": method, "id": 1, "params": dict(params or {})}
        )
        if len(body) > MAX_REQUEST_BYTES:
            raise ValueError(f"params: the {method} request is {len(body)} bytes, over Clarify's 8 MiB limit")
        return self._call(method, body)

    def insert(self, data: Any, *, integration_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Insert data into Clarify signals (created on first insert) and return ``signalsByInput``.

        The whole input is validated before the first request (see :mod:`.utils.frames`), then split into
        requests of at most ``max_request_bytes`` (see :mod:`.utils.payload`), sent paced and retried.
        Naive times are UTC; digits below the microsecond are dropped; NaN/None mean "no value". A time
        that occurs twice (also after conversion to UTC) is merged: per series the last non-null value in
        input order wins, and a warning says how many rows were merged.

        :param data: a pandas DataFrame (``DatetimeIndex`` or ``time`` column), a pyarrow Table (``time``
            column) or ``{"times": [...], "series": {key: [...]}}``.
        :param integration_id: the integration to write to; default the connection's.
        :return: ``{key: {"id": signal id, "created": bool}}`` merged over all requests.
        :raises ValueError: for bad input, before anything is sent.
        :raises ClarifyRPCError: when a request fails; the message says what was already stored.
        """
        return self.insert_frame(to_frame(data), integration_id=integration_id).signals

    def insert_frame(self, frame: Frame, *, integration_id: str | None = None) -> InsertSummary:
        """Insert an already validated :class:`~.utils.frames.Frame`; return signals and counts.

        :param frame: the output of :func:`~.utils.frames.to_frame`.
        :param integration_id: the integration to write to; default the connection's.
        """
        return self.insert_frames([frame], integration_id=integration_id)

    def insert_frames(self, frames: Iterable[Frame], *, integration_id: str | None = None) -> InsertSummary:
        """Insert a stream of validated frames, one after the other; return signals and counts over all.

        Each frame is split into requests of at most ``max_request_bytes`` (see :mod:`.utils.payload`),
        sent paced and retried like :meth:`insert`, in order. Requests are sent from a background thread
        while this thread pulls the next frames and builds the next requests (at most four wait while one
        is in flight), so memory follows the largest frame plus five requests, not the stream. A time
        repeated across frames is simply sent again: Clarify keeps the value inserted last.

        :param frames: validated frames (:func:`~.utils.frames.to_frame`, the report parser, ...); any
            iterable, consumed lazily.
        :param integration_id: the integration to write to; default the connection's.
        :return: the merged ``signalsByInput`` and the numbers of requests, values and merged rows.
        :raises ClarifyRPCError: when a request fails; the message says what all earlier requests stored
            (requests, values, series, time range) and what the failed request carried. Nothing after
            the failed request is sent.
        """
        check_budget(self.max_request_bytes)
        integration = self._integration(integration_id)
        progress = _InsertProgress()
        self._cancel = threading.Event()
        sender = _InsertSender(functools.partial(self._send_insert, progress=progress))
        try:
            iterator = iter(frames)
            while True:
                try:
                    frame = next(iterator)
                except StopIteration:
                    break
                except Exception as exc:
                    self._finish_sending(sender, progress)  # what was handed over still goes out, as before
                    if progress.requests:
                        exc.add_note(f"Before this error {progress.stored()}.")
                    raise
                self._queue_frame(frame, integration, progress, sender)
                del frame  # not kept alive while the next frame is made
            self._finish_sending(sender, progress)
        except BaseException:
            self._cancel.set()  # no new attempt, pacing wait or backoff; only a request in flight ends
            sender.stop(cancel=True)
            raise
        finally:
            self._cancel = None  # the hook stays copyable (no lock) outside of an insert
        if progress.duplicates:
            self.log.warning(
                "%d input row(s) repeated an earlier time; merged (last non-null value per series wins)",
                progress.duplicates,
            )
        self.log.info(
            "Inserted %d values of %d series into Clarify with %d request(s)",
            progress.points,
            len(progress.signals),
            progress.requests,
        )
        return InsertSummary(
            signals=progress.signals,
            requests=progress.requests,
            points=progress.points,
            duplicates=progress.duplicates,
        )

    def _queue_frame(
        self, frame: Frame, integration: str, progress: _InsertProgress, sender: _InsertSender
    ) -> None:
        """Build the frame's requests and hand them to the sender, raising the sender's failure."""
        progress.frames += 1
        progress.read_points += frame.points
        progress.duplicates += frame.duplicates
        for request in insert_requests(frame, integration_id=integration, max_bytes=self.max_request_bytes):
            self.log.info("Clarify %s request %d: %s", INSERT_METHOD, sender.handed + 1, request.describe())
            if not sender.put(request):
                self._finish_sending(sender, progress)
            del request  # its body is not kept while the next one is built

    def _send_insert(self, request: InsertRequest, progress: _InsertProgress) -> None:
        """Send one insert request and record it as stored (on the sender's thread)."""
        result = self._call(INSERT_METHOD, request.body)
        merge_signals_by_input(progress.signals, result, request.keys)
        progress.add(request)
        self._created_keys.update(k for k in request.keys if progress.signals[k].get("created"))

    def _finish_sending(self, sender: _InsertSender, progress: _InsertProgress) -> None:
        """Let the sender send what it holds and end; raise its failure, saying what was stored."""
        sender.stop()
        if sender.failure is None:
            return
        exc, number, request = sender.failure
        if not isinstance(exc, ClarifyRPCError | ValueError):
            raise exc
        self._raise_insert_failure(exc, number, request, progress)

    def _raise_insert_failure(
        self,
        exc: ClarifyRPCError | ValueError,
        number: int,
        request: InsertRequest,
        progress: _InsertProgress,
    ) -> NoReturn:
        detail = (
            f"insert request {number} failed; {progress.stored()}. "
            f"The failed request carried {request.describe()}. "
            "Inserts are idempotent: running the whole insert again is safe."
        )
        if isinstance(exc, ClarifyRPCError):
            raise ClarifyRPCError(
                code=exc.code,
                message=f"{exc.message} -- {detail}",
                params=exc.params,
                trace=exc.trace,
                method=INSERT_METHOD,
            ) from exc
        raise ClarifyRPCError(code=502, message=f"unexpected answer: {exc} -- {detail}") from exc

    def save_signals(
        self,
        signals: Mapping[str, Mapping[str, Any]],
        *,
        create_only: bool = False,
        integration_id: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Save signal metadata (``integration.saveSignals``) for the signals whose metadata changed.

        Each view is sent complete (Clarify replaces every attribute and merges only annotations), with a
        content hash in the annotation ``clarify-airflow/metadata-hash``. A signal is skipped when this
        process already saved the same hash for it -- unless this hook's inserts just created it (a signal
        deleted on the server and created anew has empty metadata). Without ``admin`` access the stored
        hash cannot be read back, so the first save in a new process always sends; saving is idempotent.

        :param signals: input key -> metadata (see :func:`~.utils.signals.save_view`).
        :param create_only: only create missing signals; existing ones are left as they are.
        :param integration_id: the integration; default the connection's.
        :return: key -> ``{"id", "created", "updated"}`` for the signals sent, and
            ``{"skipped": True}`` for those left out as unchanged.
        :raises ValueError: for bad keys or metadata, before anything is sent.
        """
        views: dict[str, dict[str, Any]] = {}
        for key, metadata in signals.items():
            validate_key(key, param="signals")
            views[key] = with_hash(save_view(key, metadata))
        check_budget(self.max_request_bytes)
        integration = self._integration(integration_id)
        cache_key = (self.settings.api_url, integration)
        with _SAVED_HASHES_LOCK:
            known = dict(_SAVED_HASHES.get(cache_key, {}))
        result: dict[str, dict[str, Any]] = {}
        to_send: dict[str, dict[str, Any]] = {}
        for key, view in views.items():
            digest = view["annotations"][HASH_ANNOTATION]
            if not create_only and known.get(key) == digest and key not in self._created_keys:
                result[key] = {"skipped": True}
            else:
                to_send[key] = view
        if result:
            self.log.info("%d signal(s) have unchanged metadata; not saved again", len(result))
        for number, request in enumerate(
            save_signals_requests(
                to_send, integration_id=integration, create_only=create_only, max_bytes=self.max_request_bytes
            ),
            start=1,
        ):
            self.log.info(
                "Clarify %s request %d: %d signal(s)", SAVE_SIGNALS_METHOD, number, len(request.keys)
            )
            answer = self._call(SAVE_SIGNALS_METHOD, request.body)
            merge_signals_by_input(result, answer, request.keys)
            if not create_only:
                with _SAVED_HASHES_LOCK:
                    saved = _SAVED_HASHES.setdefault(cache_key, {})
                    saved.update({k: to_send[k]["annotations"][HASH_ANNOTATION] for k in request.keys})
                self._created_keys.difference_update(request.keys)
        return result

    def test_connection(self) -> tuple[bool, str]:
        """Check credentials with a cheap call (``saveSignals`` with no signals); never raises."""
        try:
            settings = self.settings
            self.rpc(SAVE_SIGNALS_METHOD, {"integration": settings.integration_id, "signalsByInput": {}})
        except Exception as exc:
            return False, self._scrub(f"{type(exc).__name__}: {exc}")
        return True, f"Connected to Clarify integration {settings.integration_id} ({settings.auth} auth)"
