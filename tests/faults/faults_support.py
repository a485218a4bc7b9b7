"""Helpers of the fault campaign: scripted faults, the expected points of a report, secret scans, the table.

Nothing here knows the provider's parsing or insert code: the expected points are read from the report
table the Clarity sandbox generated (every cell as CSV text), the stored points from the Clarify sandbox.
"""

from __future__ import annotations

import base64
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_clarify.testing._server import FaultPlan

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pyarrow as pa

    from airflow_provider_clarify.testing.sandbox import Sandbox

#: A point: (input key, UTC time in ISO 8601).
Point = tuple[str, str]

_REPORT_ID = re.compile(r"\bJB[A-Z0-9]{8}\b")
_SANDBOX_URL = re.compile(r"http://127\.0\.0\.1:\d+")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~$])")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Timeout)): (.+)$", re.M)


class ScriptedFaults(FaultPlan):
    """A :class:`FaultPlan` that can also act when the n-th request under a path arrives.

    The action runs in the server's request middleware before the request's own fault is chosen, so an
    action that arms faults (or expires tokens, or URLs) applies to that very request.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cues: list[tuple[str, int, Callable[[], None]]] = []
        self._seen: Counter[int] = Counter()
        self._cue_lock = threading.Lock()

    def on_request(self, number: int, action: Callable[[], None], *, path: str = "") -> None:
        """Run ``action`` when the ``number``-th request whose path starts with ``path`` arrives.

        :param number: 1 for the first matching request.
        :param action: what to do (no arguments).
        :param path: the path prefix requests must have to count.
        """
        with self._cue_lock:
            self._cues.append((path, number, action))

    def take(self, path: str) -> Any:
        with self._cue_lock:
            due = []
            for index, (prefix, number, action) in enumerate(self._cues):
                if path.startswith(prefix):
                    self._seen[index] += 1
                    if self._seen[index] == number:
                        due.append(action)
        for action in due:
            action()
        return super().take(path)


# -- points ------------------------------------------------------------------------------------------------
def _utc_iso(text: str) -> str:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()


def expected_points(table: pa.Table, *, time_column: str = "startOfPeriod") -> dict[Point, float]:
    """The points a transfer with default options must store for a report: ``{(key, time): value}``.

    Default options: key ``<datasourceId>.<metric>``, the ``value`` attribute, empty cells skipped, values
    whose ``<metric>.qcAssessment`` is ``invalid`` dropped.

    :param table: the report table as the sandbox generated it (every cell CSV text, empty = null).
    :param time_column: the time column (``startOfPeriod`` for hour and day reports).
    """
    rows = table.to_pylist()
    metrics = [name[: -len(".value")] for name in table.column_names if name.endswith(".value")]
    points: dict[Point, float] = {}
    for row in rows:
        at = _utc_iso(row[time_column])
        for metric in metrics:
            text = row[f"{metric}.value"]
            if text is None or text == "" or row.get(f"{metric}.qcAssessment") == "invalid":
                continue
            points[(f"{row['datasourceId']}.{metric}", at)] = float(text)
    return points


def stored_points(sandbox: Sandbox) -> dict[Point, float]:
    """Every point the Clarify sandbox holds: ``{(key, time): value}``.

    :param sandbox: the sandboxes.
    """
    clarify = sandbox.clarify
    return {
        (key, moment.isoformat()): value
        for key in clarify.signals()
        for moment, value in clarify.points(key).items()
    }


def points_sent(sandbox: Sandbox) -> int:
    """Values carried by insert requests Clarify applied (a value sent twice counts twice).

    :param sandbox: the sandboxes.
    """
    return sum(
        int(call.info.get("points", 0))
        for call in sandbox.clarify.rpc_calls("integration.insert")
        if call.status == 200 and "error" not in call.info
    )


@dataclass(frozen=True)
class PointCheck:
    """Stored points compared with the expected ones.

    :param expected: how many points the report holds for Clarify.
    :param missing: expected points not stored.
    :param extra: stored points that were not expected (wrong key or time).
    :param wrong: expected points stored with another value.
    :param resent: values sent more than once (harmless: Clarify keeps one value per signal and time).
    """

    expected: int
    missing: int
    extra: int
    wrong: int
    resent: int


def compare_points(expected: dict[Point, float], stored: dict[Point, float], sent: int) -> PointCheck:
    """Compare what Clarify holds with what the report holds.

    :param expected: from :func:`expected_points`.
    :param stored: from :func:`stored_points`.
    :param sent: from :func:`points_sent`.
    """
    wrong = sum(
        1 for point, value in expected.items() if point in stored and not math.isclose(stored[point], value)
    )
    return PointCheck(
        expected=len(expected),
        missing=len(expected.keys() - stored.keys()),
        extra=len(stored.keys() - expected.keys()),
        wrong=wrong,
        resent=max(0, sent - len(stored)),
    )


# -- secrets -----------------------------------------------------------------------------------------------
def secret_values(sandbox: Sandbox) -> dict[str, str]:
    """Every secret of the run: credentials, the tokens Clarify issued, the URL signatures handed out.

    :param sandbox: the sandboxes (their request logs hold the tokens and signatures that were used).
    """
    clarify, clarity = sandbox.clarify, sandbox.clarity
    basic = base64.b64encode(f"{clarify.integration_id}:{clarify.password}".encode()).decode()
    found = {
        "Clarity API key": clarity.api_key,
        "Clarify password": clarify.password,
        "Clarify Basic credentials": basic,
        "Clarify client secret": clarify.client_secret,
    }
    for request in clarify.requests:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            found[f"OAuth token {token[:4]}…"] = token
    for request in clarity.store.requests:
        signature = request.query.get("X-Amz-Signature")
        if signature:
            found[f"URL signature {signature[:6]}…"] = signature
    return found


def secret_hits(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """``"<secret> in <where>"`` for every secret found in any text.

    :param texts: where -> captured text.
    :param secrets: name -> value.
    """
    return [
        f"{name} in {where}"
        for where, text in texts.items()
        for name, value in secrets.items()
        if value in text
    ]


# -- outcomes ----------------------------------------------------------------------------------------------
def exception_lines(text: str) -> list[str]:
    """The ``SomeError: message`` lines of the tracebacks in captured output, oldest first.

    :param text: captured output.
    """
    return [f"{match.group(1)}: {match.group(2).strip()}" for match in _EXCEPTION_LINE.finditer(text)]


def normalise(text: str, limit: int = 260) -> str:
    """``text`` without run-specific ids, ports and times or unprintable characters, shortened (for the
    generated table).

    :param text: a message.
    :param limit: the longest result.
    """
    text = _ISO_TIME.sub("<time>", _REPORT_ID.sub("<report>", _SANDBOX_URL.sub("<sandbox>", text)))
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the generated page ------------------------------------------------------------------------------------
@dataclass
class MatrixRow:
    """One fault and what came of it.

    :param order: the fault's place in the campaign (rows are written in this order).
    :param fault: what was injected.
    :param step: where in the DAG run.
    :param outcome: ``success``, or ``failed: <the task's exception>``.
    :param points: the point comparison, ``None`` when no report could be loaded.
    :param reports: reports requested from Clarity.
    :param tries: task -> tries, for tasks that needed more than one.
    :param secrets: secret hits (must be empty).
    :param bug: the open bug a strict xfail tracks for this fault, if any.
    """

    order: int
    fault: str
    step: str
    outcome: str
    points: PointCheck | None
    reports: int
    tries: dict[str, int] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    bug: str = ""


def _cell(text: str) -> str:
    """Text for a Markdown table cell or term: literal, whatever Markdown or MyST characters it holds (a
    backslash escapes any ASCII punctuation, and ``\\|`` is how a pipe table holds a ``|``)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text) or "–"


def _points_cells(check: PointCheck | None) -> list[str]:
    if check is None:
        return ["no data to load", "–", "–"]
    lost = f"{check.missing} of {check.expected}"
    if check.wrong:
        lost += f" ({check.wrong} wrong values)"
    return [lost, str(check.extra), str(check.resent)]


_HEADER = ("Fault injected", "Step", "Outcome", "Points missing", "Extra", "Re-sent", "Reports", "Task tries")
#: Pipe-table alignment per column: the counts right-aligned.
_ALIGN = ("---", "---", "---", "--:", "--:", "--:", "--:", "---")
_INTRO = """\
<!-- This file is generated by the tests in tests/faults (see below). Do not edit it by hand. -->

# Reliability under faults

The main example DAG, `example_clarity_to_clarify` (request a report, wait for it in the triggerer,
load it into Clarify, archive its files), runs under `dag.test()` against the sandboxes while one fault
at a time is injected. For every run the tests check:

- the final state: a success, or a failure whose message names the cause;
- the points Clarify holds against the points the report holds (read from the report file by the test
  itself, not by the provider's parser): none missing, none extra, no value changed;
- the reports requested from Clarity: exactly one per run (none when the quota is spent);
- every captured log text (task output; third-party DEBUG records after Airflow's secrets masker), XCom
  value, rendered template field, trigger argument and trigger event, for each secret of the run: the API
  key, the password, the client secret, the OAuth tokens and the pre-signed URL signatures.

This page is **generated by those tests** (`tests/faults/test_faults_matrix.py`). To regenerate it:

```sh
{command}
```

Generated with {versions}.

Columns: *Points missing* -- points of the report that are not in Clarify, of all points in the report
(after a failed run they are missing by design: the failure says why, and a run after the cause is fixed
loads them); *Extra* -- points in Clarify that the report does not hold; *Re-sent* -- values sent more
than once. No point can be doubled -- Clarify keeps one value per signal and time -- so a value sent
twice is harmless; a duplicate under a wrong key or time would show as *Extra*. *Reports* -- reports
requested from Clarity, each one a unit of the daily quota; *Task tries* -- tasks that needed Airflow's
task retries (the DAG has `retries=2`).

"""


def _table_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_reliability(rows: Sequence[MatrixRow], *, command: str, versions: str) -> str:
    """The MyST (Markdown) page ``docs/reliability.md`` for the campaign's rows: the matrix as a pipe table.

    :param rows: one row per fault.
    :param command: the command that regenerates the page.
    :param versions: the versions it was generated with.
    """
    lines = [_INTRO.format(command=command, versions=_cell(versions)).rstrip("\n"), ""]
    lines += [_table_line(_HEADER), _table_line(_ALIGN)]
    ordered = sorted(rows, key=lambda r: r.order)
    for row in ordered:
        tries = ", ".join(f"{task} {count}" for task, count in sorted(row.tries.items()))
        cells = [row.fault, row.step, row.outcome, *_points_cells(row.points), str(row.reports), tries]
        text = [_cell(cell) for cell in cells]
        if row.bug:
            text[2] += " -- **open bug**, see below"
        lines.append(_table_line(text))
    secrets = sum(len(row.secrets) for row in ordered)
    lines += [
        "",
        f"Secret values found over all runs: **{secrets}**.",
        "",
        "Failures name their cause; {doc}`troubleshooting` says what each message means and what to do.",
        "",
    ]
    bugs = [row for row in ordered if row.bug]
    if bugs:
        lines += ["## Open bugs", "", "Each is tracked by a strict `xfail` test until it is fixed.", ""]
        lines += [f"- **{_cell(row.fault)}**: {_cell(row.bug)}" for row in bugs]
        lines.append("")
    return "\n".join(lines)
