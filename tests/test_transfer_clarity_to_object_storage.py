"""ClarityReportToObjectStorageOperator: real HTTP to the Clarity sandbox, real files, real S3 (moto)."""

from __future__ import annotations

import gzip
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AssetAlias, ObjectStoragePath

from airflow_provider_clarify.exceptions import ClarityReportFailedError
from airflow_provider_clarify.hooks.clarity import MAX_RESUMES, ClarityHook, report_file_name
from airflow_provider_clarify.transfers import clarity_to_object_storage as module
from airflow_provider_clarify.transfers.clarity_to_object_storage import (
    ClarityReportToObjectStorageOperator,
    output_name,
    target_names,
)

if TYPE_CHECKING:
    from pathlib import Path

    from moto_s3 import MotoS3

    from airflow_provider_clarify.testing.clarity import ClaritySandbox

WINDOW = {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z"}


@pytest.fixture
def sandbox(clarity_sandbox: ClaritySandbox) -> ClaritySandbox:
    clarity_sandbox.report_delay = 0.2
    return clarity_sandbox


def ready_report(sandbox: ClaritySandbox, **params: Any) -> str:
    """Request a report through the hook and make it succeed now; the store has seen no request yet."""
    defaults = {"output_frequency": "hour", "all_datasources": True, **WINDOW}
    report_id = str(ClarityHook().request_report(**{**defaults, **params})["reportId"])
    sandbox.set_ready(report_id)
    sandbox.api.clear_requests()
    return report_id


def make_operator(**kwargs: Any) -> ClarityReportToObjectStorageOperator:
    op = ClarityReportToObjectStorageOperator(task_id="copy_report", **kwargs)
    op.hook.retry_backoff = 0.01  # keep the retry waits of the tests short
    return op


def folder_uri(path: Path) -> str:
    return f"file://{path}/"


def downloads(sandbox: ClaritySandbox) -> list[tuple[str | None, int | None, str | None]]:
    """``(file, status, fault)`` of every download request the store saw."""
    # The server notes a status once its handler returns, which can be just after the client read the body.
    deadline = time.monotonic() + 5
    while any(r.status is None for r in sandbox.store.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [(r.info.get("file"), r.status, r.fault) for r in sandbox.store.requests]


# -- pure helpers ------------------------------------------------------------------------------------------
def test_names_keep_the_report_names_and_drop_gz_only_when_decompressing() -> None:
    assert output_name("JB1.csv.gz", decompress=False) == "JB1.csv.gz"
    assert output_name("JB1.csv.gz", decompress=True) == "JB1.csv"
    assert output_name("JB1.parquet", decompress=True) == "JB1.parquet"
    assert output_name(".gz", decompress=True) == ".gz"
    assert target_names(["a.csv.gz", "b.csv.gz", "a.csv.gz"], decompress=False) == [
        "a.csv.gz",
        "b.csv.gz",
        "2-a.csv.gz",
    ]
    assert target_names(["a.csv.gz", "a.csv"], decompress=True) == ["a.csv", "1-a.csv"]


def test_report_file_names_never_leave_the_destination_folder() -> None:
    base = "https://store.example/historical/JB1/"
    assert report_file_name(base + "JB1.csv.gz?X-Amz-Signature=abc", 0) == "JB1.csv.gz"
    assert report_file_name(base + "..%2F..%2Fetc%2Fx.csv.gz", 0) == ".._.._etc_x.csv.gz"
    assert report_file_name(base + "a%5Cb", 1) == "a_b"
    assert report_file_name(base + "..", 2) == "report-part-2"
    assert report_file_name(base + "%2E%2E", 3) == "report-part-3"
    assert report_file_name(base, 4) == "report-part-4"


def test_csv_gz_is_written_byte_identical_and_stays_gzip(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    assert sandbox.gzip_content_encoding  # served with Content-Encoding: gzip, as S3 does
    report_id = ready_report(sandbox)
    (served,) = sandbox.report_files(report_id)
    op = make_operator(report_id=report_id, destination=folder_uri(tmp_path / "out"))

    uris = op.execute(context={})

    assert uris == [f"file://{tmp_path}/out/{served.name}"]
    written = (tmp_path / "out" / served.name).read_bytes()
    assert written == served.read_bytes()
    assert written[:2] == b"\x1f\x8b"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [served.name]  # no .part left
    assert ObjectStoragePath(uris[0]).read_bytes() == served.read_bytes()


def test_parquet_is_written_byte_identical(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox, file_format="parquet")
    (served,) = sandbox.report_files(report_id)
    # decompress only ever touches gzip files
    uris = make_operator(report_id=report_id, destination=str(tmp_path), decompress=True).execute({})
    assert uris == [f"file://{tmp_path}/{served.name}"]
    assert served.read_bytes()[:4] == b"PAR1"
    assert (tmp_path / served.name).read_bytes() == served.read_bytes()


def test_every_file_of_a_multi_file_report_is_written_under_its_name(
    sandbox: ClaritySandbox, tmp_path: Path
) -> None:
    sandbox.files_per_report = 3
    report_id = ready_report(sandbox, output_frequency="minute")
    served = sandbox.report_files(report_id)
    assert len(served) == 3
    assert len({p.name for p in served}) == 3

    uris = make_operator(report_id=report_id, destination=folder_uri(tmp_path)).execute({})

    assert uris == [f"file://{tmp_path}/{p.name}" for p in served]
    assert [(tmp_path / p.name).read_bytes() for p in served] == [p.read_bytes() for p in served]
    assert [f for f, _, _ in downloads(sandbox)] == [p.name for p in served]


def test_decompress_writes_the_gunzipped_csv(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)

    uris = make_operator(report_id=report_id, destination=folder_uri(tmp_path), decompress=True).execute({})

    names = [p.name.removesuffix(".gz") for p in served]
    assert all(name.endswith(".csv") for name in names)
    assert uris == [f"file://{tmp_path}/{name}" for name in names]
    for name, source in zip(names, served, strict=True):
        assert (tmp_path / name).read_bytes() == gzip.decompress(source.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_missing_nested_folders_are_created(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    target = tmp_path / "a" / "b" / "c"
    assert not (tmp_path / "a").exists()
    (uri,) = make_operator(report_id=report_id, destination=folder_uri(target)).execute({})
    assert uri.startswith(f"file://{target}/")
    assert (target / uri.rsplit("/", 1)[1]).read_bytes() == sandbox.report_files(report_id)[0].read_bytes()


def test_overwrite_false_refuses_before_downloading_and_writes_nothing(
    sandbox: ClaritySandbox, tmp_path: Path
) -> None:
    sandbox.files_per_report = 3
    report_id = ready_report(sandbox, output_frequency="minute")
    served = sandbox.report_files(report_id)
    existing = tmp_path / served[1].name
    existing.write_bytes(b"keep me")
    op = make_operator(report_id=report_id, destination=folder_uri(tmp_path))

    with pytest.raises(FileExistsError, match="overwrite=False") as info:
        op.execute({})

    assert served[1].name in str(info.value)
    assert served[0].name not in str(info.value)
    assert existing.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == [served[1].name]
    assert sandbox.store.requests == []


def test_overwrite_true_replaces(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    (served,) = sandbox.report_files(report_id)
    (tmp_path / served.name).write_bytes(b"old")
    make_operator(report_id=report_id, destination=folder_uri(tmp_path), overwrite=True).execute({})
    assert (tmp_path / served.name).read_bytes() == served.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [served.name]


def test_destination_and_report_id_are_rendered(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    op = make_operator(
        report_id="{{ params.report }}",
        destination=f"file://{tmp_path}/clarity/{{{{ ds }}}}/",
        dest_conn_id="{{ params.conn or '' }}",
    )
    context: Any = {"ds": "2024-01-01", "params": {"report": report_id, "conn": None}}
    op.render_template_fields(context)
    assert (op.report_id, op.destination, op.dest_conn_id) == (
        report_id,
        f"file://{tmp_path}/clarity/2024-01-01/",
        "",
    )
    (uri,) = op.execute(context)
    assert uri == f"file://{tmp_path}/clarity/2024-01-01/{sandbox.report_files(report_id)[0].name}"
    assert ObjectStoragePath(uri).exists()


def test_an_object_storage_path_destination_is_rendered_too(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    op = make_operator(report_id=report_id, destination=ObjectStoragePath(f"file://{tmp_path}/{{{{ ds }}}}"))
    op.render_template_fields({"ds": "2024-02-03"})  # type: ignore[arg-type]
    (uri,) = op.execute({})
    assert uri == f"file://{tmp_path}/2024-02-03/{sandbox.report_files(report_id)[0].name}"


def test_a_report_of_another_org_is_copied_with_org(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    other = sandbox.orgs[1]
    report_id = ready_report(sandbox, org=other)
    (served,) = sandbox.report_files(report_id)
    with pytest.raises(AirflowException, match="404"):  # not in the connection's default org
        make_operator(report_id=report_id, destination=folder_uri(tmp_path)).execute({})
    op = make_operator(report_id=report_id, destination=folder_uri(tmp_path), org="{{ params.org }}")
    op.render_template_fields({"params": {"org": other}})  # type: ignore[arg-type]
    op.execute({})
    assert (tmp_path / served.name).read_bytes() == served.read_bytes()
    assert {r.query.get("org") for r in sandbox.api.requests} == {sandbox.org, other}


def test_a_scheme_less_object_storage_path_gives_file_uris(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    (uri,) = make_operator(report_id=report_id, destination=ObjectStoragePath(str(tmp_path))).execute({})
    assert uri == f"file://{tmp_path}/{sandbox.report_files(report_id)[0].name}"


def test_urls_that_expire_between_files_are_renewed(
    sandbox: ClaritySandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    op = make_operator(report_id=report_id, destination=folder_uri(tmp_path))
    copy = op._copy

    def copy_then_expire(*args: Any) -> int:
        written = copy(*args)
        sandbox.expire_urls_now()  # every url handed out so far stops working
        return written

    monkeypatch.setattr(op, "_copy", copy_then_expire)
    op.execute({})

    assert [(tmp_path / p.name).read_bytes() for p in served] == [p.read_bytes() for p in served]
    assert [(f, s) for f, s, _ in downloads(sandbox)] == [
        (served[0].name, 200),
        (served[1].name, 403),
        (served[1].name, 200),
    ]


def test_a_download_that_breaks_off_is_opened_again(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    sandbox.store.faults.truncate_next(1, path=f"/historical/{report_id}/{served[1].name}")

    make_operator(report_id=report_id, destination=folder_uri(tmp_path)).execute({})

    assert [(tmp_path / p.name).read_bytes() for p in served] == [p.read_bytes() for p in served]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in served)
    # file 1 broke off half-way and resumed where it stopped (the sandbox ignores Range: whole file again)
    assert downloads(sandbox) == [
        (served[0].name, 200, None),
        (served[1].name, 200, "truncate"),
        (served[1].name, 200, None),
    ]


def test_a_download_that_keeps_breaking_off_leaves_no_file(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    sandbox.store.faults.truncate_next(MAX_RESUMES + 1, path=f"/historical/{report_id}/{served[1].name}")

    with pytest.raises(AirflowException, match=rf"{served[1].name} broke off at byte"):
        make_operator(report_id=report_id, destination=folder_uri(tmp_path)).execute({})

    # nothing under a final name, no .part left, and file 0 (complete) removed again so a retry starts clean
    assert list(tmp_path.iterdir()) == []
    broken = [f for f in downloads(sandbox) if f[2] == "truncate"]
    assert broken == [(served[1].name, 200, "truncate")] * (MAX_RESUMES + 1)


def test_a_broken_download_with_overwrite_keeps_the_old_file(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    (served,) = sandbox.report_files(report_id)
    (tmp_path / served.name).write_bytes(b"previous copy")
    sandbox.store.faults.truncate_next(MAX_RESUMES + 1)

    with pytest.raises(AirflowException, match="broke off"):
        make_operator(report_id=report_id, destination=folder_uri(tmp_path), overwrite=True).execute({})

    assert [p.name for p in tmp_path.iterdir()] == [served.name]
    assert (tmp_path / served.name).read_bytes() == b"previous copy"


# -- errors before anything is written ---------------------------------------------------------------------
def test_unfinished_and_failed_reports_fail_clearly(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    sandbox.report_delay = 60
    running = str(
        ClarityHook().request_report(output_frequency="hour", all_datasources=True, **WINDOW)["reportId"]
    )
    with pytest.raises(AirflowException, match=rf"report {running} is not finished \(status 'in-progress'\)"):
        make_operator(report_id=running, destination=folder_uri(tmp_path / "out")).execute({})
    sandbox.fail_next_reports(1, message="Report generation failed: disk full")
    failed = ready_report(sandbox)
    with pytest.raises(ClarityReportFailedError, match="disk full"):
        make_operator(report_id=failed, destination=folder_uri(tmp_path / "out")).execute({})
    assert not (tmp_path / "out").exists()
    assert sandbox.store.requests == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"report_id": "", "destination": "file:///tmp/x/"}, "report_id: expected a non-empty"),
        ({"report_id": None, "destination": "file:///tmp/x/"}, "report_id: expected a non-empty"),
        ({"report_id": "JB1", "destination": "  "}, "destination: the folder URI is empty"),
        ({"report_id": "JB1", "destination": "data/clarity"}, "destination: 'data/clarity' is a relative"),
        ({"report_id": "JB1", "destination": 42}, "destination: expected a folder URI"),
        ({"report_id": "JB1", "destination": "nosuchscheme://b/k/"}, "nosuchscheme"),
    ],
)
def test_bad_input_fails_before_any_request(
    sandbox: ClaritySandbox, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_operator(**kwargs).execute({})
    assert sandbox.api.requests == []
    assert sandbox.store.requests == []


def test_a_destination_that_is_a_file_is_refused(sandbox: ClaritySandbox, tmp_path: Path) -> None:
    report_id = ready_report(sandbox)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file, not a folder"):
        make_operator(report_id=report_id, destination=folder_uri(tmp_path / "file")).execute({})
    assert sandbox.store.requests == []


# -- asset events, lineage, secrets ------------------------------------------------------------------------
def test_written_files_become_asset_events_of_declared_aliases(
    sandbox: ClaritySandbox, moto_s3: MotoS3
) -> None:
    from airflow.sdk.execution_time.context import OutletEventAccessors

    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    alias = AssetAlias("clarity-reports")
    op = make_operator(
        report_id=report_id,
        destination=f"s3://{moto_s3.bucket}/r/",
        dest_conn_id=moto_s3.conn_id,
        outlets=[alias],
    )
    events = OutletEventAccessors()

    uris = op.execute({"outlet_events": events})  # type: ignore[typeddict-item]

    recorded = [(e.dest_asset_key.uri, e.extra) for e in events[alias].asset_alias_events]
    assert recorded == [
        (f"s3://{moto_s3.bucket}/r/{p.name}", {"report_id": report_id, "bytes": p.stat().st_size})
        for p in served
    ]
    assert uris == [f"s3://{moto_s3.conn_id}@{moto_s3.bucket}/r/{p.name}" for p in served]


def test_each_written_file_is_reported_to_hook_lineage(
    sandbox: ClaritySandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs: list[str] = []

    class Collector:
        def add_output_asset(self, *, context: Any, uri: str) -> None:
            outputs.append(uri)

    monkeypatch.setattr(module, "get_hook_lineage_collector", Collector)
    report_id = ready_report(sandbox)
    uris = make_operator(report_id=report_id, destination=folder_uri(tmp_path)).execute({})
    assert outputs == uris


def test_no_signed_url_in_logs(
    sandbox: ClaritySandbox,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    report_id = ready_report(sandbox)
    sandbox.store.faults.truncate_next(1)  # the retry warning is logged too
    make_operator(report_id=report_id, destination=folder_uri(tmp_path)).execute({})
    captured = capsys.readouterr()
    ours = (
        captured.out
        + captured.err
        + "\n".join(r.getMessage() for r in caplog.records if "clarify" in r.name or "copy_report" in r.name)
    )
    assert "Wrote file://" in ours
    assert "broke off" in ours
    assert "X-Amz" not in ours
    assert sandbox.api_key not in ours


# -- S3 (moto server) --------------------------------------------------------------------------------------
def test_s3_objects_are_byte_identical_and_readable_back(sandbox: ClaritySandbox, moto_s3: MotoS3) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    op = make_operator(
        report_id=report_id,
        destination=f"s3://{moto_s3.bucket}/clarity/2024-01-01/",
        dest_conn_id=moto_s3.conn_id,
    )

    uris = op.execute({})

    keys = [f"clarity/2024-01-01/{p.name}" for p in served]
    assert moto_s3.keys() == sorted(keys)
    assert [moto_s3.read(k) for k in keys] == [p.read_bytes() for p in served]
    assert uris == [f"s3://{moto_s3.conn_id}@{moto_s3.bucket}/{k}" for k in keys]
    assert [ObjectStoragePath(uri).read_bytes() for uri in uris] == [p.read_bytes() for p in served]
    assert moto_s3.pending_uploads() == []


def test_s3_connection_id_may_come_in_the_uri(sandbox: ClaritySandbox, moto_s3: MotoS3) -> None:
    report_id = ready_report(sandbox, file_format="parquet")
    (served,) = sandbox.report_files(report_id)
    destination = f"s3://{moto_s3.conn_id}@{moto_s3.bucket}/p"
    (uri,) = make_operator(report_id=report_id, destination=destination).execute({})
    assert uri == f"{destination}/{served.name}"
    assert moto_s3.read(f"p/{served.name}") == served.read_bytes()


def test_s3_overwrite_false_refuses_and_writes_nothing(sandbox: ClaritySandbox, moto_s3: MotoS3) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    moto_s3.put(f"out/{served[0].name}", b"keep me")
    op = make_operator(
        report_id=report_id, destination=f"s3://{moto_s3.bucket}/out/", dest_conn_id="aws_moto"
    )

    with pytest.raises(FileExistsError, match=served[0].name):
        op.execute({})

    assert moto_s3.keys() == [f"out/{served[0].name}"]
    assert moto_s3.read(f"out/{served[0].name}") == b"keep me"
    assert sandbox.store.requests == []

    # overwrite=True replaces it
    replace = make_operator(
        report_id=report_id,
        destination=f"s3://{moto_s3.bucket}/out/",
        dest_conn_id="aws_moto",
        overwrite=True,
    )
    replace.execute({})
    assert [moto_s3.read(f"out/{p.name}") for p in served] == [p.read_bytes() for p in served]


def test_s3_a_broken_download_leaves_no_object_and_no_upload(
    sandbox: ClaritySandbox, moto_s3: MotoS3
) -> None:
    sandbox.files_per_report = 2
    report_id = ready_report(sandbox)
    served = sandbox.report_files(report_id)
    sandbox.store.faults.truncate_next(MAX_RESUMES + 1, path=f"/historical/{report_id}/{served[1].name}")
    op = make_operator(report_id=report_id, destination=f"s3://{moto_s3.bucket}/x/", dest_conn_id="aws_moto")

    with pytest.raises(AirflowException, match="broke off"):
        op.execute({})

    assert moto_s3.keys() == []  # file 1 never appeared; file 0 was removed again
    assert moto_s3.pending_uploads() == []  # the multipart uploads were aborted, not left behind


def test_s3_a_download_that_breaks_off_once_still_completes(sandbox: ClaritySandbox, moto_s3: MotoS3) -> None:
    report_id = ready_report(sandbox)
    (served,) = sandbox.report_files(report_id)
    sandbox.store.faults.truncate_next(1)
    op = make_operator(report_id=report_id, destination=f"s3://{moto_s3.bucket}/", dest_conn_id="aws_moto")
    (uri,) = op.execute({})
    assert moto_s3.read(served.name) == served.read_bytes()
    assert ObjectStoragePath(uri).read_bytes() == served.read_bytes()
    assert moto_s3.pending_uploads() == []
