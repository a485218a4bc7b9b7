"""Check that the ``clarify`` and ``clarity`` connection forms look right in the Airflow UI.

Not part of ``make test`` (it needs Chromium and starts a whole Airflow). Run it by hand after changing
the connection forms (``CONNECTION_FORMS`` in ``airflow_provider_clarify/get_provider_info.py``)::

    apt-get install -y chromium                      # Debian's package, once
    .venv/bin/python scripts/check_connection_forms.py [--screenshots /tmp/forms]

What it does, all on 127.0.0.1 and in throwaway folders under /tmp:

1. starts ``airflow standalone`` in a new ``AIRFLOW_HOME`` (SimpleAuthManager, every user an admin, no
   example DAGs) on a free port and waits until ``/api/v2/monitor/health`` reports it healthy;
2. asks the UI API for the connection form metadata (``GET /ui/connections/hook_meta``) and checks every
   label, placeholder, hidden field and extra field of both types against ``CONNECTION_FORMS``;
3. drives headless Chromium over the DevTools protocol: opens *Admin > Connections*, clicks *Add
   Connection*, picks the connection type, opens the *Standard Fields* and *Extra Fields* sections and
   checks that each expected label and placeholder is shown (and that hidden fields are not), saving a
   screenshot of each section;
4. stops Chromium and every Airflow process it started, and deletes the throwaway home.

Exit status 0 when both checks pass for both types, 1 otherwise (each missing label is listed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil

from airflow_provider_clarify.get_provider_info import CONNECTION_FORMS

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Labels Airflow's own form uses for the standard fields (when the provider does not relabel them).
STANDARD_LABELS = {
    "host": "Host",
    "login": "Login",
    "password": "Password",
    "port": "Port",
    "schema": "Schema",
}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1100",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def expected_form(conn_type: str) -> dict[str, Any]:
    """What the form of ``conn_type`` must show, from ``CONNECTION_FORMS``.

    :param conn_type: ``clarify`` or ``clarity``.
    """
    form = CONNECTION_FORMS[conn_type]
    behaviour = form["ui-field-behaviour"]
    return {
        "hook_name": form["hook-name"],
        "hidden": list(behaviour.get("hidden-fields", [])),
        "relabeling": dict(behaviour.get("relabeling", {})),
        "placeholders": dict(behaviour.get("placeholders", {})),
        "extra_labels": {name: spec["label"] for name, spec in form["conn-fields"].items()},
    }


# -- processes ------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_tree(process: subprocess.Popen[bytes], *, grace: float = 20.0) -> None:
    """Terminate ``process`` and every process it started (SIGTERM, then SIGKILL after ``grace`` s).

    :param process: a process this script started.
    :param grace: seconds to wait for a clean exit before killing.
    """
    try:
        parent = psutil.Process(process.pid)
        tree = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        tree = []
    for proc in tree:  # children first: airflow standalone ignores SIGINT and may not forward SIGTERM
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def airflow_standalone(port: int, *, timeout: float) -> Iterator[str]:
    """Run ``airflow standalone`` in a throwaway home; yield its base URL once healthy.

    :param port: the API server port.
    :param timeout: seconds to wait for health.
    """
    home = Path(tempfile.mkdtemp(prefix="clarify-ui-check-home-"))
    (home / "dags").mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
    }
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")}
    airflow = Path(sys.executable).with_name("airflow")
    log_path = home / "standalone.log"
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(airflow), "standalone"], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        print(f"airflow standalone (pid {process.pid}) in {home}, API on {base_url}", flush=True)
        wait_healthy(base_url, process, log_path, timeout=timeout)
        yield base_url
    finally:
        stop_tree(process)
        shutil.rmtree(home, ignore_errors=True)
        print("airflow standalone stopped", flush=True)


def wait_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: Path, *, timeout: float) -> None:
    """Poll ``/api/v2/monitor/health`` until the metadatabase and scheduler are healthy.

    :param base_url: the API server URL.
    :param process: the standalone process (its early exit is an error).
    :param log_path: its log, shown when it fails.
    :param timeout: seconds to wait.
    """
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {process.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(requests.RequestException, ValueError):
            health = requests.get(f"{base_url}/api/v2/monitor/health", timeout=5).json()
            if all(health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler")):
                return
        time.sleep(1)
    raise RuntimeError(f"airflow standalone not healthy after {timeout:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# -- check 1: the UI API ------------------------------------------------------------------------------------
def check_hook_meta(base_url: str) -> list[str]:
    """Compare ``/ui/connections/hook_meta`` with ``CONNECTION_FORMS``; return the problems found.

    :param base_url: the API server URL.
    """
    import requests

    token = requests.get(f"{base_url}/auth/token", timeout=10).json()["access_token"]
    response = requests.get(
        f"{base_url}/ui/connections/hook_meta", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    response.raise_for_status()
    metas = {m["connection_type"]: m for m in response.json()}
    problems: list[str] = []
    for conn_type in CONNECTION_FORMS:
        want = expected_form(conn_type)
        meta = metas.get(conn_type)
        if meta is None:
            problems.append(f"hook_meta: connection type {conn_type!r} is not registered")
            continue
        fields = meta.get("standard_fields") or {}
        if meta.get("hook_name") != want["hook_name"]:
            problems.append(f"hook_meta {conn_type}: hook_name {meta.get('hook_name')!r}")
        for name in want["hidden"]:
            key = "url_schema" if name == "schema" else name
            if not (fields.get(key) or {}).get("hidden"):
                problems.append(f"hook_meta {conn_type}: field {name!r} is not hidden")
        for name, label in want["relabeling"].items():
            title = (fields.get(name) or {}).get("title")
            if title != label:
                problems.append(f"hook_meta {conn_type}: {name} title {title!r}, want {label!r}")
        for name, text in want["placeholders"].items():
            if (fields.get(name) or {}).get("placeholder") != text:
                problems.append(f"hook_meta {conn_type}: {name} placeholder is not {text!r}")
        extras = meta.get("extra_fields") or {}
        for name, label in want["extra_labels"].items():
            title = ((extras.get(name) or {}).get("schema") or {}).get("title")
            if title != label:
                problems.append(f"hook_meta {conn_type}: extra {name!r} title {title!r}, want {label!r}")
        print(f"hook_meta {conn_type}: {len(fields)} standard and {len(extras)} extra fields checked")
    return problems


# -- check 2: the rendered form in Chromium -------------------------------------------------------------
class DevTools:
    """A minimal Chrome DevTools protocol client for one page (over aiohttp's websocket client).

    :param ws: the page target's websocket.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._id = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped).

        :param method: e.g. ``Page.navigate``.
        :param params: the command's parameters.
        """
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value.

        :param expression: the JavaScript expression.
        """
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, seconds: float = 30.0, what: str = "") -> None:
        """Evaluate ``expression`` until it is truthy.

        :param expression: the JavaScript expression.
        :param seconds: how long to wait.
        :param what: what is awaited, for the error message.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await self.evaluate(f"!!({expression})"):
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"timed out waiting for {what or expression}")

    async def click(self, element: str) -> None:
        """Click the middle of an element with the mouse, as a person would.

        :param element: a JavaScript expression that yields the element.
        """
        box = await self.evaluate(
            f"(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}}); "
            "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1
            )

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the viewport.

        :param path: the file to write.
        """
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


# JavaScript helpers run in the page.
_CLICK_BUTTON = """(() => {
  const want = %s;
  const button = [...document.querySelectorAll('button')].find(
    b => (b.innerText || '').trim().toLowerCase().includes(want) ||
         (b.getAttribute('aria-label') || '').toLowerCase().includes(want));
  if (!button) return false;
  button.click();
  return true;
})()"""
_DIALOG = "document.querySelector('[role=dialog]')"
# Only what is rendered counts: labels and inputs with a size on screen.
_VISIBLE_FORM = """(() => {
  const dialog = document.querySelector('[role=dialog]');
  const shown = e => e.getBoundingClientRect().height > 0;
  const labels = [...dialog.querySelectorAll('label')].filter(shown)
    .map(l => (l.innerText || '').trim());
  const placeholders = [...dialog.querySelectorAll('input, textarea')].filter(shown)
    .map(i => i.placeholder || '');
  return {labels, placeholders};
})()"""


async def _open_type(page: DevTools, conn_type: str, hook_name: str) -> None:
    """Fill the connection id and choose ``hook_name`` in the connection-type select of the open dialog."""
    combobox = f"{_DIALOG}.querySelector('input[role=combobox]')"
    await page.wait_for(combobox, what="the connection type select")
    await page.evaluate(f"{_DIALOG}.querySelector('input[name=connection_id]').focus()")
    await page.send("Input.insertText", text=f"{conn_type}_default")
    await page.evaluate(f"{combobox}.focus()")
    await page.send("Input.insertText", text=hook_name)
    option = f"""[...document.querySelectorAll('[role=option], [id*="-option-"]')].find(
        o => (o.innerText || '').trim() === {json.dumps(hook_name)})"""
    await page.wait_for(option, what=f"the option {hook_name!r}")
    await page.evaluate(f"({option}).click()")


async def _open_section(page: DevTools, section: str) -> None:
    """Open one accordion section of the dialog (``standardFields`` or ``Extra Fields``) and wait for it.

    :param page: the page.
    :param section: the section id's suffix in Airflow's form.
    """
    trigger = f"{_DIALOG}.querySelector('[data-part=item-trigger][id$={json.dumps(':' + section)}]')"
    await page.wait_for(trigger, what=f"the {section!r} section")
    if await page.evaluate(f"{trigger}.getAttribute('aria-expanded')") != "true":
        await page.click(trigger)
    await page.wait_for(f"{trigger}.getAttribute('aria-expanded') === 'true'", what=f"{section!r} to open")
    await asyncio.sleep(0.5)  # the opening animation


@contextlib.contextmanager
def headless_chromium(chromium: str) -> Iterator[int]:
    """Run headless Chromium with a throwaway profile; yield its DevTools port.

    :param chromium: the Chromium executable.
    """
    profile = Path(tempfile.mkdtemp(prefix="clarify-ui-check-chromium-"))
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it chose here
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.2)
        yield int(port_file.read_text().split()[0])
    finally:
        stop_tree(process, grace=5)
        shutil.rmtree(profile, ignore_errors=True)


async def check_rendered_forms(base_url: str, devtools_port: int, screenshots: Path) -> list[str]:
    """Open the add-connection form of both types in the browser; return the problems found.

    :param base_url: the Airflow UI URL.
    :param devtools_port: the browser's DevTools port.
    :param screenshots: folder for the PNGs (two per connection type: standard and extra fields).
    """
    problems: list[str] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            targets = await response.json()
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        async with session.ws_connect(page_ws, max_msg_size=0) as ws:
            page = DevTools(ws)
            await page.send("Page.enable")
            await page.send("Runtime.enable")
            for conn_type in CONNECTION_FORMS:
                problems += await _check_one_form(page, base_url, conn_type, screenshots)
    return problems


async def _check_one_form(page: DevTools, base_url: str, conn_type: str, screenshots: Path) -> list[str]:
    want = expected_form(conn_type)
    # The login endpoint of SimpleAuthManager (all admins) sets the session cookie, then the UI loads.
    await page.send("Page.navigate", url=f"{base_url}/auth/token/login")
    await page.wait_for("document.readyState === 'complete' && !!document.getElementById('root')")
    await page.send("Page.navigate", url=f"{base_url}/connections")
    await page.wait_for(
        _CLICK_BUTTON % json.dumps("add connection"), seconds=60, what="the Add Connection button"
    )
    await page.wait_for(_DIALOG, what="the add-connection dialog")
    await _open_type(page, conn_type, want["hook_name"])
    first_label = next(iter(want["relabeling"].values()))
    await page.wait_for(
        f"{_DIALOG}.innerText.includes({json.dumps(first_label)})", what=f"the {conn_type} form fields"
    )
    labels: set[str] = set()
    placeholders: set[str] = set()
    for section in ("standardFields", "Extra Fields"):
        await _open_section(page, section)
        form = await page.evaluate(_VISIBLE_FORM)
        labels.update(form["labels"])
        placeholders.update(form["placeholders"])
        await page.screenshot(
            screenshots / f"connection-form-{conn_type}-{section.replace(' ', '-').lower()}.png"
        )
    problems = []
    expected_labels = [*want["relabeling"].values(), *want["extra_labels"].values()]
    for label in expected_labels:
        if label not in labels:
            problems.append(f"UI {conn_type}: label {label!r} is not shown on the form")
    for name in want["hidden"]:
        if STANDARD_LABELS[name] in labels:
            problems.append(f"UI {conn_type}: hidden field {name!r} is shown")
    for name, placeholder in want["placeholders"].items():
        if placeholder not in placeholders:
            problems.append(f"UI {conn_type}: no input with the {name} placeholder {placeholder!r}")
    shown = [label for label in expected_labels if label in labels]
    print(f"UI {conn_type}: labels shown {shown}; screenshots in {screenshots}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run both checks; return the exit status.

    :param argv: command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--screenshots", type=Path, help="folder for the PNGs (default: a new one under /tmp)"
    )
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--port", type=int, default=0, help="API server port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Airflow")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("Chromium not found: apt-get install -y chromium, or pass --chromium")
    screenshots = args.screenshots or Path(tempfile.mkdtemp(prefix="clarify-ui-forms-"))
    screenshots.mkdir(parents=True, exist_ok=True)
    with airflow_standalone(args.port or free_port(), timeout=args.timeout) as base_url:
        problems = check_hook_meta(base_url)
        with headless_chromium(args.chromium) as devtools_port:
            problems += asyncio.run(check_rendered_forms(base_url, devtools_port, screenshots))
    for problem in problems:
        print(f"FAIL {problem}")
    print("connection forms: OK" if not problems else f"connection forms: {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
