"""Regulatory data files: the file job, the manifest check, and the local outbox.

No Kafka and no network here.  A file job (the value of a record on
``integrations.regulatory.files``) carries one day's CSV and its manifest as text::

    {"report_date": "2024-01-15", "file_name": "REG_INS001_20240115.csv",
     "manifest_name": "REG_INS001_20240115.manifest.json", "csv": "…", "manifest": "{…}"}

:func:`verify_manifest` recomputes from the CSV what the manifest states (``file_name``,
``sha256``, ``bytes``, ``record_count``, ``control_totals``, ``report_date``; see
``docs/bordereaux.md``) and raises :class:`ManifestMismatch` (``Permanent``) at the first
difference: such a pair never leaves.

:class:`Outbox` writes the CSV, then the manifest, into a local directory: each under a
temporary name in that directory, flushed to disk, then renamed to its final name, so a
reader never sees a partial file and a manifest never precedes its CSV.  A file already there
with the same bytes is left alone (a re-run writes nothing); the files are read back and
checked again before they are handed to the uploader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from processors.bordereaux.rows import REGULATORY_COLUMNS
from processors.contract.money import MINOR_UNITS
from processors.errors import DecodeError, Permanent, Retriable, ValidationFailed

__all__ = [
    "CSV_HEADER",
    "MANIFEST_KEYS",
    "TOTAL_FIELDS",
    "FileJob",
    "Manifest",
    "ManifestMismatch",
    "Outbox",
    "OutboxUnavailable",
    "StagedFiles",
    "verify_manifest",
]

log = logging.getLogger(__name__)

CSV_HEADER: Final = REGULATORY_COLUMNS
"""The columns of a regulatory CSV, in order (the ledger writes them: one definition)."""

TOTAL_FIELDS: Final = ("gross_premium", "paid_amount", "reserve_amount")
"""The columns summed per currency into the manifest's ``control_totals``."""

MANIFEST_KEYS: Final = ("file_name", "sha256", "bytes", "record_count", "control_totals", "report_date")
"""The keys of a manifest, in their canonical order."""

_CSV_NAME = re.compile(r"REG_(?P<cedant>[A-Za-z0-9]+)_(?P<day>\d{8})\.csv")
_MANIFEST_NAME = re.compile(r"REG_(?P<cedant>[A-Za-z0-9]+)_(?P<day>\d{8})\.manifest\.json")
_SHA256 = re.compile(r"[0-9a-f]{64}")

_WIDE = Context(prec=100)
"""Sums and rounding of amounts never lose digits to the default 28-digit context."""

Totals = dict[str, dict[str, Decimal]]
"""Per currency: ``gross_premium``, ``paid_amount``, ``reserve_amount`` sums."""


class ManifestMismatch(Permanent):
    """The manifest does not describe its CSV (or either is malformed): the pair never leaves."""


class OutboxUnavailable(Retriable):
    """The outbox directory cannot be written or read now (disk full, permissions, I/O error)."""


class FileJob(BaseModel):
    """One day's regulatory file and its manifest, as the assembler published them."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    report_date: date
    file_name: str
    manifest_name: str
    csv: str
    manifest: str

    @model_validator(mode="after")
    def _names(self) -> FileJob:
        day = self.report_date.strftime("%Y%m%d")
        csv_name = _CSV_NAME.fullmatch(self.file_name)
        if csv_name is None or csv_name["day"] != day:
            raise ValueError(f"file_name must be REG_<cedant>_{day}.csv")
        expected = f"REG_{csv_name['cedant']}_{day}.manifest.json"
        if self.manifest_name != expected or _MANIFEST_NAME.fullmatch(self.manifest_name) is None:
            raise ValueError(f"manifest_name must be {expected}")
        return self

    def __repr__(self) -> str:  # the CSV holds every policy and claim of the day: never in a repr
        return (
            f"FileJob(report_date={self.report_date.isoformat()}, file_name={self.file_name!r}, "
            f"csv={len(self.csv)} chars, manifest={len(self.manifest)} chars)"
        )

    __str__ = __repr__

    @classmethod
    def from_bytes(cls, value: bytes | None) -> FileJob:
        """Decode a record value; :class:`DecodeError` or :class:`ValidationFailed` when it is not a job."""
        if value is None:
            raise DecodeError("file job: the record has no value")
        try:
            payload = json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"file job: not UTF-8 JSON ({type(exc).__name__})") from exc
        if not isinstance(payload, dict):
            raise DecodeError("file job: the value must be a JSON object")
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}"
                for err in exc.errors(include_input=False, include_url=False)
            )
            raise ValidationFailed(f"file job: {problems}") from exc

    @property
    def csv_bytes(self) -> bytes:
        return self.csv.encode("utf-8")

    @property
    def manifest_bytes(self) -> bytes:
        return self.manifest.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a verified manifest says (and its CSV agrees with); amounts keep the manifest's form."""

    file_name: str
    sha256: str
    bytes: int
    record_count: int
    control_totals: Mapping[str, Mapping[str, Decimal]]
    report_date: date

    def control_totals_json(self) -> dict[str, dict[str, str]]:
        """The totals as the manifest writes them: currencies sorted, amounts as strings."""
        return {
            currency: {name: str(totals[name]) for name in TOTAL_FIELDS}
            for currency, totals in sorted(self.control_totals.items())
        }


def verify_manifest(csv_data: bytes, manifest_data: bytes, *, file_name: str, report_date: date) -> Manifest:
    """Check every statement of the manifest against the CSV; :class:`ManifestMismatch` if one is wrong.

    Amounts are compared as decimals (``"10.50"`` equals ``"10.5"``), and a total may be the
    exact sum or that sum rounded half-up to the currency's minor units; a currency the
    manifest leaves out must have zero totals in the CSV, and the other way round.
    """
    stated = _parse_manifest(manifest_data)
    where = f"manifest of {file_name}"
    if stated["file_name"] != file_name:
        raise ManifestMismatch(f"{where}: file_name is {stated['file_name']!r}")
    if stated["report_date"] != report_date:
        raise ManifestMismatch(f"{where}: report_date is {stated['report_date']}, the job's is {report_date}")
    size = len(csv_data)
    if stated["bytes"] != size:
        raise ManifestMismatch(f"{where}: bytes is {stated['bytes']}, the CSV has {size}")
    digest = hashlib.sha256(csv_data).hexdigest()
    if stated["sha256"] != digest:
        raise ManifestMismatch(f"{where}: sha256 differs from the CSV's")
    record_count, totals = csv_facts(csv_data, file_name=file_name)
    if stated["record_count"] != record_count:
        raise ManifestMismatch(
            f"{where}: record_count is {stated['record_count']}, the CSV has {record_count}"
        )
    stated_totals: Totals = stated["control_totals"]
    zero = Decimal(0)
    for currency in sorted(set(totals) | set(stated_totals)):
        for name in TOTAL_FIELDS:
            computed = totals.get(currency, {}).get(name, zero)
            claimed = stated_totals.get(currency, {}).get(name, zero)
            if computed != claimed and _rounded(computed, currency) != claimed:
                raise ManifestMismatch(
                    f"{where}: control_totals.{currency}.{name} is {claimed}, the CSV sums to {computed}"
                )
    return Manifest(
        file_name=file_name,
        sha256=digest,
        bytes=size,
        record_count=record_count,
        control_totals=stated_totals,  # as the manifest writes them ("0.00", not "0"), now verified
        report_date=report_date,
    )


def _rounded(amount: Decimal, currency: str) -> Decimal | None:
    """``amount`` rounded half-up to ``currency``'s minor units; None for an unknown currency."""
    places = MINOR_UNITS.get(currency)
    if places is None:
        return None
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP, context=_WIDE)


def csv_facts(csv_data: bytes, *, file_name: str = "the CSV") -> tuple[int, Totals]:
    """(rows without the header, control totals per currency) of a regulatory CSV."""
    try:
        text = csv_data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestMismatch(f"{file_name}: not UTF-8") from exc
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise ManifestMismatch(f"{file_name}: not readable CSV ({exc})") from exc
    if not rows or tuple(rows[0]) != CSV_HEADER:
        raise ManifestMismatch(f"{file_name}: the header row is not the documented one")
    columns = {name: CSV_HEADER.index(name) for name in (*TOTAL_FIELDS, "currency")}
    totals: Totals = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(CSV_HEADER):
            raise ManifestMismatch(f"{file_name}: line {number} has {len(row)} fields, not {len(CSV_HEADER)}")
        currency = row[columns["currency"]]
        if not currency:
            raise ManifestMismatch(f"{file_name}: line {number} has no currency")
        sums = totals.setdefault(currency, dict.fromkeys(TOTAL_FIELDS, Decimal(0)))
        for name in TOTAL_FIELDS:
            cell = row[columns[name]]
            if cell:
                sums[name] = _WIDE.add(sums[name], _amount(cell, f"{file_name}: line {number} {name}"))
    return len(rows) - 1, totals


def _amount(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ManifestMismatch(f"{where} is not a decimal amount") from None
    if not value.is_finite():
        raise ManifestMismatch(f"{where} is not a decimal amount")
    return value


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestMismatch(f"the manifest is not UTF-8 JSON ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise ManifestMismatch("the manifest must be a JSON object")
    missing = [key for key in MANIFEST_KEYS if key not in payload]
    if missing:
        raise ManifestMismatch(f"the manifest lacks {', '.join(missing)}")
    out: dict[str, Any] = {"file_name": payload["file_name"]}
    for key in ("bytes", "record_count"):
        value = payload[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ManifestMismatch(f"the manifest's {key} must be a whole number ≥ 0")
        out[key] = value
    if not isinstance(payload["sha256"], str) or not _SHA256.fullmatch(payload["sha256"]):
        raise ManifestMismatch("the manifest's sha256 must be 64 lower-case hex digits")
    out["sha256"] = payload["sha256"]
    try:
        out["report_date"] = date.fromisoformat(str(payload["report_date"]))
    except ValueError:
        raise ManifestMismatch("the manifest's report_date is not a YYYY-MM-DD date") from None
    out["control_totals"] = _parse_totals(payload["control_totals"])
    return out


def _parse_totals(value: Any) -> Totals:
    """``{"USD": {"gross_premium": "…", …}, …}``; a list of objects with ``currency`` is read too."""
    if isinstance(value, list):
        entries: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("currency"), str):
                raise ManifestMismatch("the manifest's control_totals entries need a currency")
            entries[item["currency"]] = item
        value = entries
    if not isinstance(value, dict):
        raise ManifestMismatch("the manifest's control_totals must be an object per currency")
    totals: Totals = {}
    for currency, sums in value.items():
        if not isinstance(sums, dict):
            raise ManifestMismatch(f"the manifest's control_totals.{currency} must be an object")
        parsed: dict[str, Decimal] = {}
        for name in TOTAL_FIELDS:
            amount = sums.get(name, "0")
            if not isinstance(amount, str):
                raise ManifestMismatch(f"the manifest's control_totals.{currency}.{name} must be a string")
            parsed[name] = _amount(amount, f"the manifest's control_totals.{currency}.{name}")
        totals[currency] = parsed
    return totals


# --------------------------------------------------------------------------- outbox


@dataclass(frozen=True, slots=True)
class StagedFiles:
    """The CSV and the manifest as they lie in the outbox, verified."""

    csv_path: Path
    manifest_path: Path
    csv: bytes
    manifest: bytes
    facts: Manifest
    written: tuple[str, ...]
    """Names of the files this call (re)wrote; empty on a re-run that found them in place."""


Rename = Callable[[Path, Path], None]


class Outbox:
    """The local directory a day's files are written to before they are uploaded.

    ``replace`` renames a finished temporary file to its final name (``os.replace``); tests
    pass a recorder.  Nothing is created before the first :meth:`stage`.
    """

    def __init__(self, directory: Path, *, replace: Rename = os.replace) -> None:
        self.directory = Path(directory)
        self._replace = replace

    def __repr__(self) -> str:
        return f"Outbox({str(self.directory)!r})"

    def stage(self, job: FileJob) -> StagedFiles:
        """Verify the job, write the CSV then the manifest, read both back and verify again.

        Blocking file I/O: call it in a worker thread from the event loop.
        """
        csv_data, manifest_data = job.csv_bytes, job.manifest_bytes
        verify_manifest(csv_data, manifest_data, file_name=job.file_name, report_date=job.report_date)
        csv_path = self.directory / job.file_name
        manifest_path = self.directory / job.manifest_name
        written = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._write(csv_path, csv_data):
                written.append(job.file_name)
            if self._write(manifest_path, manifest_data):
                written.append(job.manifest_name)
            # What leaves is what lies in the outbox: check those bytes, not the job's.
            csv_on_disk, manifest_on_disk = csv_path.read_bytes(), manifest_path.read_bytes()
        except OSError as exc:
            raise OutboxUnavailable(
                f"outbox {self.directory}: cannot write {job.file_name}: {type(exc).__name__}: {exc.strerror}"
            ) from exc
        facts = verify_manifest(
            csv_on_disk, manifest_on_disk, file_name=job.file_name, report_date=job.report_date
        )
        return StagedFiles(csv_path, manifest_path, csv_on_disk, manifest_on_disk, facts, tuple(written))

    def _write(self, path: Path, data: bytes) -> bool:
        """Write ``data`` to ``path`` through a temporary file; False when it was there already."""
        try:
            if path.read_bytes() == data:
                return False
            log.warning("outbox: %s exists with other content; replacing it", path.name)
        except FileNotFoundError:
            pass
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)
        return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
