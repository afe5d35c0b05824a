"""Regulatory files: manifest checks, the outbox (temporary names, manifest last, idempotent
re-runs), and the app's handling of a file job with a fake uploader."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from processors.adapters.sftp import UploadResult
from processors.apps.regulatory import (
    FileJob,
    ManifestMismatch,
    Outbox,
    RegulatoryApp,
    RegulatorySettings,
    announcement,
    verify_manifest,
)
from processors.apps.regulatory.files import CSV_HEADER, OutboxUnavailable, csv_facts
from processors.contract import Codec
from processors.errors import DecodeError, Permanent, Retriable, ValidationFailed
from processors.resilience.config import EndpointPolicy
from processors.resilience.guard import EndpointGuard
from processors.resilience.retry import RetryPolicy
from processors.runtime.failures import H
from processors.runtime.message import StaticMessage, header_value
from processors.topics.catalogue import load_catalogue

DAY = date(2024, 1, 15)
CSV_NAME = "REG_INS001_20240115.csv"
MANIFEST_NAME = "REG_INS001_20240115.manifest.json"
SOURCE = "integrations.regulatory.files"

ROWS = [
    ["POLICY", "e-1", "policy.issued", "2024-01-15", "", "POL-1", "", "PROPERTY", "US", "USD",
     "1200.00", "500000.00", "", ""],
    ["CLAIM", "e-2", "claim.paid", "2024-01-15", "", "POL-1", "CLM-1", "PROPERTY", "US", "USD",
     "", "", "250.50", "1000.00"],
    ["POLICY", "e-3", "policy.endorsed", "2024-01-15", "2024-01-14", "POL-2", "", "MOTOR", "", "EUR",
     "-35.10", "20000.00", "", ""],
    ["POLICY", "e-4", "policy.issued", "2024-01-15", "", "POL-3", "", "LIABILITY", "CA",
     "USD", "99.99", "1000.00", "", ""],
]  # fmt: skip


def make_csv(rows: Sequence[Sequence[str]] = ROWS) -> str:
    lines = [",".join(CSV_HEADER), *(",".join(row) for row in rows)]
    return "".join(line + "\r\n" for line in lines)


def make_manifest(csv_text: str, **changes: object) -> str:
    data = csv_text.encode()
    body: dict[str, object] = {
        "file_name": CSV_NAME,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "record_count": csv_text.count("\r\n") - 1,
        "control_totals": {
            "EUR": {"gross_premium": "-35.10", "paid_amount": "0.00", "reserve_amount": "0.00"},
            "USD": {"gross_premium": "1299.99", "paid_amount": "250.50", "reserve_amount": "1000.00"},
        },
        "report_date": DAY.isoformat(),
    }
    body.update(changes)
    return json.dumps(body, separators=(",", ":"))


def make_job(csv_text: str | None = None, manifest: str | None = None) -> FileJob:
    csv_text = make_csv() if csv_text is None else csv_text
    return FileJob(
        report_date=DAY,
        file_name=CSV_NAME,
        manifest_name=MANIFEST_NAME,
        csv=csv_text,
        manifest=make_manifest(csv_text) if manifest is None else manifest,
    )


def job_bytes(job: FileJob) -> bytes:
    return job.model_dump_json().encode()


# --------------------------------------------------------------------------- manifest checks


def test_a_consistent_manifest_is_accepted_and_its_facts_are_the_csvs() -> None:
    job = make_job()
    facts = verify_manifest(job.csv_bytes, job.manifest_bytes, file_name=CSV_NAME, report_date=DAY)
    assert facts.record_count == 4
    assert facts.bytes == len(job.csv_bytes)
    assert facts.sha256 == hashlib.sha256(job.csv_bytes).hexdigest()
    assert facts.control_totals["USD"] == {
        "gross_premium": Decimal("1299.99"),
        "paid_amount": Decimal("250.50"),
        "reserve_amount": Decimal("1000.00"),
    }
    assert facts.control_totals_json()["EUR"] == {  # the manifest's own form
        "gross_premium": "-35.10",
        "paid_amount": "0.00",
        "reserve_amount": "0.00",
    }
    assert list(facts.control_totals_json()) == ["EUR", "USD"]


def test_amounts_compare_as_decimals_and_a_list_of_totals_is_read_too() -> None:
    csv_text = make_csv()
    listed = [
        {"currency": "USD", "gross_premium": "1299.990", "paid_amount": "250.5", "reserve_amount": "1000"},
        {"currency": "EUR", "gross_premium": "-35.1", "paid_amount": "0", "reserve_amount": "0"},
    ]
    manifest = make_manifest(csv_text, control_totals=listed)
    facts = verify_manifest(csv_text.encode(), manifest.encode(), file_name=CSV_NAME, report_date=DAY)
    assert facts.control_totals["EUR"]["gross_premium"] == Decimal("-35.10")


def test_a_total_may_be_the_sum_rounded_to_the_currencys_minor_units() -> None:
    row = [*ROWS[0][:9], "JPY", "1000.4", *ROWS[0][11:]]
    csv_text = make_csv([row, row])
    sums = {"gross_premium": "2001", "paid_amount": "0", "reserve_amount": "0"}
    manifest = make_manifest(csv_text, record_count=2, control_totals={"JPY": sums})
    facts = verify_manifest(csv_text.encode(), manifest.encode(), file_name=CSV_NAME, report_date=DAY)
    assert str(facts.control_totals["JPY"]["gross_premium"]) == "2001"  # the CSV's sum is 2000.8
    wrong = make_manifest(csv_text, record_count=2, control_totals={"JPY": {**sums, "gross_premium": "2000"}})
    with pytest.raises(ManifestMismatch, match=r"JPY\.gross_premium is 2000"):
        verify_manifest(csv_text.encode(), wrong.encode(), file_name=CSV_NAME, report_date=DAY)


def test_a_day_without_rows_has_a_header_only_and_no_totals() -> None:
    csv_text = make_csv([])
    manifest = make_manifest(csv_text, control_totals={})
    facts = verify_manifest(csv_text.encode(), manifest.encode(), file_name=CSV_NAME, report_date=DAY)
    assert (facts.record_count, dict(facts.control_totals)) == (0, {})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sha256": "0" * 64}, "sha256 differs"),
        ({"bytes": 1}, "bytes is 1"),
        ({"record_count": 5}, "record_count is 5"),
        ({"file_name": "REG_INS001_20240116.csv"}, "file_name is"),
        ({"report_date": "2024-01-16"}, "report_date is 2024-01-16"),
        (
            {
                "control_totals": {
                    "EUR": {"gross_premium": "-35.10", "paid_amount": "0", "reserve_amount": "0"},
                    "USD": {"gross_premium": "1299.98", "paid_amount": "250.50", "reserve_amount": "1000.00"},
                }
            },
            "control_totals.USD.gross_premium is 1299.98, the CSV sums to 1299.99",
        ),
        (
            {"control_totals": {"USD": {"gross_premium": "1299.99", "paid_amount": "250.50",
                                        "reserve_amount": "1000.00"}}},
            "control_totals.EUR.gross_premium",
        ),
        ({"control_totals": {"USD": {"gross_premium": 1299.99}}}, "must be a string"),
        ({"bytes": "406"}, "bytes must be a whole number"),
        ({"sha256": "ABC"}, "64 lower-case hex digits"),
    ],
)  # fmt: skip
def test_every_statement_of_the_manifest_is_checked(changes: dict[str, object], reason: str) -> None:
    csv_text = make_csv()
    manifest = make_manifest(csv_text, **changes)
    with pytest.raises(ManifestMismatch, match=reason) as caught:
        verify_manifest(csv_text.encode(), manifest.encode(), file_name=CSV_NAME, report_date=DAY)
    assert isinstance(caught.value, Permanent)


def test_a_manifest_missing_keys_or_not_json_is_refused() -> None:
    csv_text = make_csv()
    incomplete = json.dumps({"file_name": CSV_NAME}).encode()
    with pytest.raises(ManifestMismatch, match="lacks sha256, bytes, record_count"):
        verify_manifest(csv_text.encode(), incomplete, file_name=CSV_NAME, report_date=DAY)
    with pytest.raises(ManifestMismatch, match="not UTF-8 JSON"):
        verify_manifest(csv_text.encode(), b"{nope", file_name=CSV_NAME, report_date=DAY)


@pytest.mark.parametrize(
    ("csv_text", "reason"),
    [
        ("a,b\r\n", "header row"),
        (make_csv([["POLICY", "e-1"]]), "line 2 has 2 fields"),
        (make_csv([[*ROWS[0][:10], "12,00", *ROWS[0][11:]]]), "line 2 has 15 fields"),
        (make_csv([[*ROWS[0][:10], "twelve", *ROWS[0][11:]]]), "gross_premium is not a decimal"),
        (make_csv([[*ROWS[0][:9], "", *ROWS[0][10:]]]), "line 2 has no currency"),
    ],
)
def test_malformed_csv_is_refused(csv_text: str, reason: str) -> None:
    with pytest.raises(ManifestMismatch, match=reason):
        csv_facts(csv_text.encode())


def test_quoted_fields_follow_rfc_4180() -> None:
    row = [*ROWS[0][:5], '"POL-1, annex ""A"""', *ROWS[0][6:]]
    count, totals = csv_facts(make_csv([row]).encode())
    assert count == 1
    assert totals["USD"]["gross_premium"] == Decimal("1200.00")


# --------------------------------------------------------------------------- file job


def test_a_file_job_decodes_and_its_repr_leaves_the_data_out() -> None:
    job = make_job()
    decoded = FileJob.from_bytes(job_bytes(job))
    assert decoded == job
    assert "POL-1" not in repr(decoded)
    assert "POL-1" not in str(decoded)


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (None, DecodeError, "no value"),
        (b"\xff", DecodeError, "not UTF-8 JSON"),
        (b"[]", DecodeError, "JSON object"),
        (b'{"report_date": "2024-01-15"}', ValidationFailed, "file_name"),
    ],
)
def test_a_record_that_is_not_a_file_job_is_poison(
    value: bytes | None, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        FileJob.from_bytes(value)


@pytest.mark.parametrize(
    ("file_name", "manifest_name"),
    [
        ("REG_INS001_20240116.csv", "REG_INS001_20240116.manifest.json"),  # another day
        ("../REG_INS001_20240115.csv", MANIFEST_NAME),  # a path, not a name
        (CSV_NAME, "REG_OTHER_20240115.manifest.json"),  # another cedant
        (CSV_NAME, "REG_INS001_20240115.json"),
    ],
)
def test_file_names_must_be_the_documented_ones_for_the_report_date(
    file_name: str, manifest_name: str
) -> None:
    value = json.dumps(
        {"report_date": "2024-01-15", "file_name": file_name, "manifest_name": manifest_name,
         "csv": "", "manifest": "{}"}
    ).encode()  # fmt: skip
    with pytest.raises(ValidationFailed):
        FileJob.from_bytes(value)


# --------------------------------------------------------------------------- outbox


class RecordingReplace:
    """``os.replace`` that records each rename and what the outbox held just before it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.calls: list[tuple[Path, Path, set[str]]] = []

    def __call__(self, src: Path, dst: Path) -> None:
        before = {p.name for p in self.directory.iterdir()}
        self.calls.append((Path(src), Path(dst), before))
        Path(src).replace(dst)


def test_the_outbox_writes_the_csv_then_the_manifest_each_through_a_temporary_name(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "outbox"
    replace = RecordingReplace(outbox_dir)
    job = make_job()
    staged = Outbox(outbox_dir, replace=replace).stage(job)

    assert [dst.name for _, dst, _ in replace.calls] == [CSV_NAME, MANIFEST_NAME]
    for src, dst, before in replace.calls:
        assert src.parent == dst.parent == outbox_dir  # same directory: the rename is atomic
        assert src.name != dst.name
        assert src.name in before  # the bytes were complete under the temporary name
        assert dst.name not in before
    assert MANIFEST_NAME not in replace.calls[0][2]  # no manifest before its CSV is in place
    assert CSV_NAME in replace.calls[1][2]
    assert sorted(p.name for p in outbox_dir.iterdir()) == sorted([CSV_NAME, MANIFEST_NAME])
    assert (outbox_dir / CSV_NAME).read_bytes() == job.csv_bytes == staged.csv
    assert (outbox_dir / MANIFEST_NAME).read_bytes() == job.manifest_bytes == staged.manifest
    assert staged.written == (CSV_NAME, MANIFEST_NAME)
    assert staged.facts.record_count == 4


def test_a_re_run_finds_identical_files_and_writes_nothing(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "outbox"
    job = make_job()
    Outbox(outbox_dir).stage(job)
    stats = {p.name: p.stat().st_mtime_ns for p in outbox_dir.iterdir()}
    replace = RecordingReplace(outbox_dir)
    again = Outbox(outbox_dir, replace=replace).stage(job)
    assert replace.calls == []
    assert again.written == ()
    assert {p.name: p.stat().st_mtime_ns for p in outbox_dir.iterdir()} == stats
    assert again.csv == job.csv_bytes


def test_a_different_file_of_the_same_name_is_replaced_whole(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "outbox"
    outbox_dir.mkdir()
    (outbox_dir / CSV_NAME).write_bytes(b"stale")
    job = make_job()
    staged = Outbox(outbox_dir).stage(job)
    assert staged.written == (CSV_NAME, MANIFEST_NAME)
    assert (outbox_dir / CSV_NAME).read_bytes() == job.csv_bytes


def test_a_mismatched_manifest_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "outbox"
    csv_text = make_csv()
    job = make_job(csv_text, make_manifest(csv_text, record_count=3))
    with pytest.raises(ManifestMismatch, match="record_count is 3, the CSV has 4"):
        Outbox(outbox_dir).stage(job)
    assert not outbox_dir.exists() or list(outbox_dir.iterdir()) == []


def test_a_failed_write_leaves_no_temporary_file_and_is_retriable(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "outbox"

    def failing(src: Path, dst: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OutboxUnavailable, match="No space left on device") as caught:
        Outbox(outbox_dir, replace=failing).stage(make_job())
    assert isinstance(caught.value, Retriable)
    assert list(outbox_dir.iterdir()) == []


# --------------------------------------------------------------------------- the app


class FakeUploader:
    """Stands in for ``SftpUploader``: keeps what it was sent; fails the next ``fail`` calls."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.errors: list[Exception] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def upload(self, name: str, data: bytes) -> UploadResult:
        self.calls.append(name)
        if self.errors:
            raise self.errors.pop(0)
        digest = hashlib.sha256(data).hexdigest()
        present = self.files.get(name) == data
        self.files[name] = data
        return UploadResult(name, f"/{name}", len(data), digest, already_present=present)


def make_app(tmp_path: Path, uploader: FakeUploader) -> RegulatoryApp:
    topics = dataclasses.replace(load_catalogue().app("regulatory"), sources=(SOURCE,))
    policy = EndpointPolicy(retry=RetryPolicy(max_attempts=2, initial_delay_ms=0, max_delay_ms=0))
    return RegulatoryApp(
        codec=Codec(),
        uploader=uploader,
        guard=EndpointGuard("regulator-sftp", policy),
        outbox=Outbox(tmp_path / "outbox"),
        settings=RegulatorySettings(outbox_dir=tmp_path / "outbox", reports_topic="reports"),
        topics=topics,
    )


def message(value: bytes, *, key: bytes | None = b"2024-01-15", offset: int = 7) -> StaticMessage:
    return StaticMessage(SOURCE, 0, offset, key, value, (("traceparent", b"00-abc-def-01"),))


async def test_a_job_is_uploaded_csv_first_and_announced_once(tmp_path: Path) -> None:
    uploader = FakeUploader()
    app = make_app(tmp_path, uploader)
    job = make_job()
    before = datetime.now(UTC)
    out = await app.process(message(job_bytes(job)))

    assert uploader.calls == [CSV_NAME, MANIFEST_NAME]
    assert uploader.files == {CSV_NAME: job.csv_bytes, MANIFEST_NAME: job.manifest_bytes}
    assert len(out) == 1
    record = out[0]
    assert (record.topic, record.key) == ("reports", b"2024-01-15")
    assert header_value(record.headers, "content-type") == "application/json"
    assert header_value(record.headers, "traceparent") == "00-abc-def-01"
    assert header_value(record.headers, H.ATTEMPTS) == "2"  # one call per file
    assert record.value is not None
    body = json.loads(record.value)
    assert list(body) == [
        "report_date", "file_name", "manifest_name", "sha256", "bytes", "record_count",
        "control_totals", "uploaded_at", "already_present",
    ]  # fmt: skip
    assert body["report_date"] == "2024-01-15"
    assert (body["file_name"], body["manifest_name"]) == (CSV_NAME, MANIFEST_NAME)
    assert body["sha256"] == hashlib.sha256(job.csv_bytes).hexdigest()
    assert (body["bytes"], body["record_count"]) == (len(job.csv_bytes), 4)
    assert body["control_totals"]["USD"] == {
        "gross_premium": "1299.99",
        "paid_amount": "250.50",
        "reserve_amount": "1000.00",
    }
    uploaded_at = datetime.fromisoformat(body["uploaded_at"])
    offset = uploaded_at.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert uploaded_at >= before.replace(microsecond=0)
    assert body["already_present"] is False

    again = await app.process(message(job_bytes(job), offset=8))
    assert again[0].value is not None
    assert json.loads(again[0].value)["already_present"] is True


async def test_a_transient_upload_failure_is_retried_in_place(tmp_path: Path) -> None:
    uploader = FakeUploader()
    uploader.errors.append(Retriable("connection reset"))
    app = make_app(tmp_path, uploader)
    out = await app.process(message(job_bytes(make_job())))
    assert uploader.calls == [CSV_NAME, CSV_NAME, MANIFEST_NAME]
    assert header_value(out[0].headers, H.ATTEMPTS) == "3"


async def test_a_mismatched_manifest_goes_to_the_dlq_and_nothing_is_uploaded(tmp_path: Path) -> None:
    uploader = FakeUploader()
    app = make_app(tmp_path, uploader)
    csv_text = make_csv()
    msg = message(job_bytes(make_job(csv_text, make_manifest(csv_text, sha256="1" * 64))))
    with pytest.raises(ManifestMismatch) as caught:
        await app.process(msg)
    assert uploader.calls == []
    (moved,) = app.failure(msg, caught.value, group="integrations.regulatory")
    assert moved.topic == app.topics.dlq
    assert header_value(moved.headers, H.ERROR_CLASS) == "ManifestMismatch"
    assert header_value(moved.headers, H.APP) == "regulatory"


async def test_exhausted_retries_move_the_job_to_the_first_retry_tier(tmp_path: Path) -> None:
    uploader = FakeUploader()
    uploader.errors.extend([Retriable("down"), Retriable("still down")])
    app = make_app(tmp_path, uploader)
    msg = message(job_bytes(make_job()))
    with pytest.raises(Retriable) as caught:
        await app.process(msg)
    (moved,) = app.failure(msg, caught.value, group="integrations.regulatory")
    assert moved.topic == app.topics.retry_tiers[0].topic
    assert header_value(moved.headers, H.ATTEMPTS) == "2"


@pytest.mark.parametrize(("key", "reason"), [(None, "key is missing"), (b"2024-01-16", "does not match")])
async def test_the_key_must_be_the_report_date(tmp_path: Path, key: bytes | None, reason: str) -> None:
    uploader = FakeUploader()
    app = make_app(tmp_path, uploader)
    with pytest.raises(ValidationFailed, match=reason):
        await app.process(message(job_bytes(make_job()), key=key))
    assert uploader.calls == []


def test_the_announcement_needs_an_aware_time() -> None:
    job = make_job()
    facts = verify_manifest(job.csv_bytes, job.manifest_bytes, file_name=CSV_NAME, report_date=DAY)
    with pytest.raises(ValueError, match="timezone-aware"):
        announcement(
            facts, manifest_name=MANIFEST_NAME, uploaded_at=datetime(2024, 1, 16), already_present=False
        )
