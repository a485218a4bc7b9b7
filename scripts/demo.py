"""`make demo`: the main job end to end on the sandbox of both APIs.

1. starts the Clarify and Clarity sandboxes on 127.0.0.1;
2. runs ``airflow dags test example_clarity_to_clarify`` in the throwaway Airflow home (``.airflow-home``):
   request a report, wait for it in the (inline) triggerer, then load it into Clarify and archive its
   files under ``.airflow-home/demo-archive/``;
3. prints a summary a person can read, and checks every number against what the sandboxes stored.

Exits non-zero when the DAG run fails or a number does not match. The full ``airflow dags test`` output
is kept in ``.airflow-home/demo-dags-test.log``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_provider_clarify.testing.sandbox import Sandbox

DAG_ID = "example_clarity_to_clarify"


def _airflow_home() -> Path:
    home = os.environ.get("AIRFLOW_HOME")
    if not home:
        raise SystemExit("AIRFLOW_HOME is not set: run the demo with `make demo`")
    return Path(home)


def _run_dag(sandbox: Sandbox, home: Path, archive: Path) -> float:
    env = {
        **os.environ,
        **sandbox.env(),
        "CLARITY_EXAMPLE_ARCHIVE": archive.as_uri(),
        "CLARITY_EXAMPLE_POLL_SECONDS": "2",
    }
    log = home / "demo-dags-test.log"
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", DAG_ID],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"`airflow dags test {DAG_ID}` failed with exit code {done.returncode} (log: {log})")
    return elapsed


def _last_run_results() -> tuple[str, dict[str, str], dict[str, Any]]:
    """State, task states and return values of the newest run of the DAG (read from the metadata DB)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc()).limit(1)
        ).one()
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
        rows = session.scalars(
            XComModel.get_many(run_id=run.run_id, dag_ids=DAG_ID, key="return_value")
        ).all()
        values = {row.task_id: XComModel.deserialize_value(row) for row in rows}
        return str(run.state), states, values


def _check(what: str, shown: object, stored: object) -> None:
    if shown != stored:
        raise SystemExit(f"mismatch in {what}: the DAG reported {shown!r}, the sandbox holds {stored!r}")


def main() -> int:
    """Run the main job on the sandbox, print its summary, check it against the sandboxes."""
    home = _airflow_home()
    archive = home / "demo-archive"
    shutil.rmtree(archive, ignore_errors=True)
    with Sandbox(clarity={"report_delay": 3.0}) as sandbox:
        print(f"Clarify sandbox {sandbox.clarify.url}, Clarity sandbox {sandbox.clarity.url}")
        print(f"Running `airflow dags test {DAG_ID}` (AIRFLOW_HOME={home}) ...", flush=True)
        elapsed = _run_dag(sandbox, home, archive)
        state, tasks, values = _last_run_results()
        report_id = values["request_report"]
        loaded = values["load_into_clarify"]
        written = values["archive_files"]
        clarity, clarify = sandbox.clarity, sandbox.clarify

        print(
            f"\nDAG run: {state} in {elapsed:.1f} s; tasks: {', '.join(f'{t} {s}' for t, s in tasks.items())}"
        )
        print(f"Report {report_id}: {loaded['rows']} rows ({clarity.report(report_id)['report']})")
        print(
            f"Clarify: {loaded['signals']} signals ({loaded['created']} created), "
            f"{loaded['points']} points inserted with {loaded['requests']} request(s)"
        )
        print(f"Archive: {len(written)} file(s)")
        for uri in written:
            print(f"  {uri}  {Path(unquote(urlsplit(uri).path)).stat().st_size} bytes")

        _check("run state", state, "success")
        _check("reports requested", [r["reportId"] for r in clarity.reports], [report_id])
        _check("report rows", loaded["rows"], clarity.report_table(report_id).num_rows)
        signals = clarify.signals()
        _check("signals", loaded["signals"], len(signals))
        _check("created signals", loaded["created"], len(signals))
        _check("points", loaded["points"], sum(len(clarify.points(key)) for key in signals))
        served = {p.name: p.read_bytes() for p in clarity.report_files(report_id)}
        copied = {p.name: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
        _check("archived files (byte for byte)", copied, served)
    print("\nEvery number above matches what the sandboxes stored.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
