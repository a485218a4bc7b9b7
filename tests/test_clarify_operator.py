"""ClarifyInsertOperator against the Clarify sandbox (real HTTP), with in-memory data and files."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_clarify.operators.clarify import ClarifyInsertOperator
from airflow_provider_clarify.testing.clarify import ClarifySandbox

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from moto_s3 import MotoS3

T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClarifySandbox]:
    with ClarifySandbox(rate_limit=None) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", server.connection_json("oauth"))
        yield server


def operator(**kwargs: Any) -> ClarifyInsertOperator:
    return ClarifyInsertOperator(task_id="insert", requests_per_second=None, **kwargs)


def frame(n: int = 10, keys: tuple[str, ...] = ("s1.pm2_5", "s1.temp")) -> pd.DataFrame:
    index = pd.date_range(T0, periods=n, freq="min", name="time")
    return pd.DataFrame({k: np.arange(n) * (i + 1) + 0.5 for i, k in enumerate(keys)}, index=index)


def assert_stored(sandbox: ClarifySandbox, df: pd.DataFrame) -> None:
    for key in df.columns:
        expected = {t.to_pydatetime(): float(v) for t, v in df[key].items() if not np.isnan(v)}
        assert sandbox.points(key) == expected, key


def test_operator_shape() -> None:
    op = ClarifyInsertOperator(task_id="x", data={"times": [], "series": {}})
    assert set(op.template_fields) == {"data", "integration_id", "signals"}
    assert all(hasattr(op, name) for name in op.template_fields)
    assert op.clarify_conn_id == "clarify_default"
    with pytest.raises(TypeError):
        ClarifyInsertOperator("x", {})  # type: ignore[misc] - keyword-only


def test_dataframe_with_signals(sandbox: ClarifySandbox) -> None:
    df = frame()
    signals = {"s1.pm2_5": {"name": "PM2.5 — s1", "engUnit": "µg/m³", "labels": {"site": "s1"}}}
    result = operator(data=df, signals=signals).execute(context={})
    assert result == {
        "signals": {k: sandbox.signal(k)["id"] for k in df.columns},
        "created": sorted(df.columns),
        "points": 20,
        "requests": 1,
    }
    json.dumps(result)  # small and JSON-serialisable (XCom)
    assert_stored(sandbox, df)
    assert sandbox.signal("s1.pm2_5")["engUnit"] == "µg/m³"
    # second run, same metadata: no saveSignals request; nothing newly created
    again = operator(data=df, signals=signals).execute(context={})
    assert again["created"] == []
    assert len(sandbox.rpc_calls("integration.saveSignals")) == 1


def test_dict_and_arrow_inputs(sandbox: ClarifySandbox) -> None:
    data = {"times": ["2024-03-01T00:00:00Z", "2024-03-01T00:01:00Z"], "series": {"d": [1.5, None]}}
    assert operator(data=data).execute(context={})["points"] == 1
    table = pa.table({"time": pa.array([T0, T0 + timedelta(minutes=1)]), "t": [2.0, 3.0]})
    result = operator(data=table, integration_id=sandbox.integration_id).execute(context={})
    assert result["points"] == 2
    assert sandbox.points("t") == {T0: 2.0, T0 + timedelta(minutes=1): 3.0}
    assert sandbox.points("d") == {T0: 1.5}


def test_a_file_on_s3_is_read_with_the_connection_in_its_uri(
    sandbox: ClarifySandbox, moto_s3: MotoS3
) -> None:
    df = frame(n=50)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df.reset_index(), preserve_index=False), buffer)
    moto_s3.put("in/data.parquet", buffer.getvalue())
    uri = f"s3://{moto_s3.conn_id}@{moto_s3.bucket}/in/data.parquet"  # no file_conn_id: the URI names it
    result = operator(data=uri).execute(context={})
    assert result["points"] == int(df.notna().sum().sum())
    assert_stored(sandbox, df)


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet", "objectstoragepath"])
def test_files_are_read_in_batches(sandbox: ClarifySandbox, tmp_path: Path, kind: str) -> None:
    df = frame(n=2500)
    df.iloc[::7, 1] = np.nan
    flat = df.reset_index()
    flat["time"] = flat["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "csv":
        path = tmp_path / "data.csv"
        flat.to_csv(path, index=False)
        data: Any = str(path)
    elif kind == "csv.gz":
        path = tmp_path / "data.csv.gz"
        with gzip.open(path, "wt") as stream:
            flat.to_csv(stream, index=False)
        data = f"file://{path}"
    else:
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pandas(df.reset_index(), preserve_index=False), path, row_group_size=300)
        data = str(path) if kind == "parquet" else ObjectStoragePath(f"file://{path}")
    result = operator(data=data, batch_rows=1000, max_request_bytes=64 * 1024).execute(context={})
    assert result["points"] == int(df.notna().sum().sum())
    assert result["requests"] >= 3
    assert sorted(result["signals"]) == sorted(df.columns)
    assert_stored(sandbox, df)


def test_bad_row_late_in_a_file_fails_before_any_request(sandbox: ClarifySandbox, tmp_path: Path) -> None:
    values = np.arange(60, dtype=float)
    values[54] = np.inf
    times = pa.array([T0 + timedelta(minutes=m) for m in range(60)])
    pq.write_table(pa.table({"time": times, "a": values}), tmp_path / "late.parquet", row_group_size=10)
    with pytest.raises(
        ValueError, match=r"^data \(late.parquet, rows from 50\): series 'a' position 4 .*not finite"
    ):
        operator(data=str(tmp_path / "late.parquet"), batch_rows=10).execute(context={})
    csv_lines = ["time,a"] + [f"2024-03-01T00:{m:02d}:00Z,{m}" for m in range(60)]
    csv_lines[55] = "2024-03-01T00:54:00Z,-inf"
    (tmp_path / "late.csv").write_text("\n".join(csv_lines) + "\n")
    with pytest.raises(ValueError, match=r"series 'a' position 54 \(time 2024-03-01T00:54:00Z\)"):
        operator(data=str(tmp_path / "late.csv"), batch_rows=10).execute(context={})
    assert sandbox.requests == []


def test_text_deep_in_a_gzip_csv_is_named_with_its_row(sandbox: ClarifySandbox, tmp_path: Path) -> None:
    lines = ["time,a,b"] + [
        f"2024-03-01T{m // 3600:02d}:{m // 60 % 60:02d}:{m % 60:02d}Z,{m},NaN" for m in range(80_000)
    ]
    lines[1 + 71_234] = lines[1 + 71_234].replace(",NaN", ",n/a?")
    path = tmp_path / "deep.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(
        ValueError, match=r"series 'b' position 71234 \(time 2024-03-01T19:47:14Z\): value 'n/a\?'"
    ):
        operator(data=str(path)).execute(context={})
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (
            "time,a\n2024-03-01T00:00:00Z,\n2024-03-01T00:01:00Z,abc\n",
            "bad.csv",
            r"^data \('bad.csv'\): series 'a' position 1 \(time 2024-03-01T00:01:00Z\): value 'abc' is not a "
            "number",
        ),
        ("t,a\n2024-03-01T00:00:00Z,1\n", "notime.csv", r"has no 'time' column"),
        ("time,a\n2024-03-01T00:00:00Z,1\n", "data.json", r"is not a .csv, .csv.gz or .parquet file"),
        ("time,a\nnot-a-time,1\n", "badtime.csv", r"times position 0: cannot parse 'not-a-time'"),
    ],
)
def test_bad_files(sandbox: ClarifySandbox, tmp_path: Path, content: str, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        operator(data=str(path)).execute(context={})
    assert sandbox.requests == []


def test_bad_signals_fail_before_any_request(sandbox: ClarifySandbox) -> None:
    with pytest.raises(ValueError, match=r"signals: 's1.pm2_5' field 'labels'"):
        operator(data=frame(), signals={"s1.pm2_5": {"labels": ["x"]}}).execute(context={})
    with pytest.raises(ValueError, match="signals must be a dict"):
        operator(data=frame(), signals=[1]).execute(context={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^data: "):
        operator(data=pd.DataFrame({"a": [1]})).execute(context={})
    assert sandbox.requests == []


def test_templated_data_renders_a_path(sandbox: ClarifySandbox, tmp_path: Path) -> None:
    path = tmp_path / "2024-03-01.csv"
    path.write_text("time,x\n2024-03-01T00:00:00Z,4\n")
    op = operator(data=str(tmp_path) + "/{{ ds }}.csv")
    op.render_template_fields(context={"ds": "2024-03-01"})  # type: ignore[arg-type]
    assert op.data == str(path)
    assert op.execute(context={})["points"] == 1
    assert sandbox.points("x") == {T0: 4.0}
