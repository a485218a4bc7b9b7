"""Both sandboxes at once, with the Airflow connection variables that point at them."""

from __future__ import annotations

from typing import Any

from airflow_provider_clarify.testing.clarify import ClarifySandbox
from airflow_provider_clarify.testing.clarity import ClaritySandbox


class Sandbox:
    """Both sandboxes at once.

    :param clarify: keyword arguments for :class:`ClarifySandbox`.
    :param clarity: keyword arguments for :class:`ClaritySandbox`.
    :param clarify_auth: which Clarify authentication the connection in :meth:`env` uses
        (``"basic"``, ``"oauth"`` or ``"credentials"``).
    """

    def __init__(
        self,
        *,
        clarify: dict[str, Any] | None = None,
        clarity: dict[str, Any] | None = None,
        clarify_auth: str = "basic",
    ) -> None:
        self.clarify = ClarifySandbox(**(clarify or {}))
        self.clarity = ClaritySandbox(**(clarity or {}))
        self.clarify_auth = clarify_auth

    def start(self) -> Sandbox:
        """Start both servers."""
        self.clarify.start()
        try:
            self.clarity.start()
        except BaseException:
            self.clarify.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers."""
        try:
            self.clarity.stop()
        finally:
            self.clarify.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that define ``clarify_default`` and ``clarity_default`` for Airflow."""
        return {
            "AIRFLOW_CONN_CLARIFY_DEFAULT": self.clarify.connection_json(self.clarify_auth),  # type: ignore[arg-type]
            "AIRFLOW_CONN_CLARITY_DEFAULT": self.clarity.connection_json(),
        }
