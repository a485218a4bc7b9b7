"""Run both sandboxes from the command line and print the connections to use.

``python -m airflow_provider_clarify.testing`` prints ``export AIRFLOW_CONN_...='...'`` lines for a
shell, then serves on 127.0.0.1 until interrupted or until ``--duration`` seconds have passed
(one hour by default), so a forgotten sandbox stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import threading
from typing import TYPE_CHECKING, Any

from airflow_provider_clarify.testing.sandbox import Sandbox

if TYPE_CHECKING:
    from collections.abc import Sequence


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_clarify.testing",
        description="Serve the Clarify and Clarity sandboxes on 127.0.0.1.",
    )
    parser.add_argument(
        "--duration", type=float, default=3600.0, help="stop after this many seconds (default 3600)"
    )
    parser.add_argument(
        "--clarify-auth",
        choices=["basic", "oauth", "credentials"],
        default="basic",
        help="authentication the printed Clarify connection uses",
    )
    parser.add_argument(
        "--report-delay", type=float, default=5.0, help="seconds until a Clarity report succeeds"
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=1.0,
        help="Clarify requests per second per method (0 = unlimited)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the sandboxes, print the connection variables, serve until stopped."""
    args = _parse_args(argv)
    clarify: dict[str, Any] = {"rate_limit": args.rate_limit or None}
    clarity: dict[str, Any] = {"report_delay": args.report_delay}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Sandbox(clarify=clarify, clarity=clarity, clarify_auth=args.clarify_auth) as sandbox:
        print(f"# Clarify sandbox: {sandbox.clarify.url}")
        print(f"# Clarity sandbox: {sandbox.clarity.url} (downloads from {sandbox.clarity.store_url})")
        for name, value in sandbox.env().items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# serving for {args.duration:g} s; Ctrl-C stops earlier", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(args.duration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
