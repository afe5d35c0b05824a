"""Regulatory app wiring: file jobs → local outbox → the regulator's SFTP server → announcement.

For each record on ``integrations.regulatory.files`` (key: the report date; value: a file
job, see :mod:`processors.apps.regulatory.files`):

1. the CSV and the manifest are checked against each other and written to the outbox (CSV
   first, manifest last, each through a temporary name); a mismatch is ``Permanent`` and the
   job goes to the dead-letter topic — nothing leaves;
2. the CSV, then the manifest, are uploaded through :class:`~processors.adapters.sftp.SftpUploader`
   behind the ``regulator-sftp`` endpoint guard (breaker, in-place retries, deadline); each
   upload is verified and idempotent, so a re-run finds the files in place and writes nothing;
3. one announcement is published on ``regulatory.reports`` (key: the report date).

At least once: a crash between the upload and the commit runs the job again, which finds
both files on the server and announces them again with ``already_present: true``.  Transient
failures go through the app's retry tiers, then the DLQ (app ``regulatory``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from pydantic import BaseModel, ConfigDict, Field

from processors.adapters.sftp import ENDPOINT, SftpSettings, SftpUploader, UploadResult
from processors.apps.regulatory.files import FileJob, Manifest, Outbox
from processors.context import RecordContext
from processors.contract import Codec
from processors.errors import ValidationFailed
from processors.resilience.breaker import BreakerRegistry
from processors.resilience.config import ResilienceConfig
from processors.resilience.guard import CallContext, EndpointGuard, Unguarded
from processors.runtime.app import PendingReader, RecordApp
from processors.runtime.message import HeaderList, KafkaMessage, OutRecord
from processors.topics.catalogue import AppTopics

__all__ = [
    "APP_NAME",
    "ENDPOINT",
    "RegulatoryApp",
    "RegulatorySettings",
    "Uploader",
    "announcement",
    "build_regulatory_app",
]

APP_NAME: Final = "regulatory"


class RegulatorySettings(BaseModel):
    """``PROCESSORS_REGULATORY__…`` once nested in the process settings as ``regulatory``.

    e.g. ``PROCESSORS_REGULATORY__OUTBOX_DIR=/var/lib/processors/outbox``,
    ``PROCESSORS_REGULATORY__SFTP__HOST=sftp.regulator.example``,
    ``PROCESSORS_REGULATORY__SFTP__PASSWORD=…`` (a secret: never printed),
    ``PROCESSORS_REGULATORY__SFTP__KNOWN_HOST_KEY='ssh-ed25519 AAAA…'``,
    ``PROCESSORS_REGULATORY__SFTP__REMOTE_DIR=/inbound``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    outbox_dir: Path = Path("var/regulatory/outbox")
    """Where the files are written before they leave (relative: to the working directory)."""
    sftp: SftpSettings = Field(default_factory=SftpSettings)
    reports_topic: str = "regulatory.reports"
    replay_limit: int = Field(default=3, ge=0)


class Uploader(Protocol):
    """What the app needs of the regulator's file transfer (:class:`SftpUploader`; a fake in tests)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def upload(self, name: str, data: bytes) -> UploadResult: ...


class RegulatoryApp(RecordApp[FileJob, bytes]):
    """File jobs → the day's CSV and manifest on the regulator's SFTP → a report announcement."""

    name = APP_NAME

    def __init__(
        self,
        *,
        codec: Codec,
        uploader: Uploader,
        guard: EndpointGuard,
        outbox: Outbox,
        settings: RegulatorySettings,
        topics: AppTopics,
        keep_key_order: bool = True,
        pending_reader: PendingReader | None = None,
    ) -> None:
        self.codec = codec
        self.setup(
            topics,
            replay_limit=settings.replay_limit,
            keep_key_order=keep_key_order,
            pending_reader=pending_reader,
        )
        self.uploader = uploader
        self.guard = guard
        self.outbox = outbox
        self.settings = settings

    async def start(self) -> None:
        await self.uploader.start()

    async def stop(self) -> None:
        await self.uploader.close()

    def decode(self, msg: KafkaMessage) -> FileJob:
        job = FileJob.from_bytes(msg.value())
        key = msg.key()
        report_date = job.report_date.isoformat()
        if key is None:
            raise ValidationFailed("file job: the message key is missing; it must be the report date")
        if key != report_date.encode():
            raise ValidationFailed(f"file job: the message key does not match report_date {report_date}")
        return job

    async def handle(self, item: FileJob) -> Sequence[bytes]:
        job = item
        staged = await asyncio.to_thread(self.outbox.stage, job)
        uploaded = [
            await self._upload(job, name, data, operation)
            for name, data, operation in (
                (job.file_name, staged.csv, "upload_csv"),
                (job.manifest_name, staged.manifest, "upload_manifest"),
            )
        ]
        return [
            announcement(
                staged.facts,
                manifest_name=job.manifest_name,
                uploaded_at=datetime.now(UTC),
                already_present=all(result.already_present for result in uploaded),
            )
        ]

    def records(self, msg: KafkaMessage, outputs: Sequence[bytes], context: RecordContext) -> list[OutRecord]:
        headers: HeaderList = [("content-type", b"application/json")]
        return [
            OutRecord(topic=self.settings.reports_topic, key=msg.key(), value=v, headers=headers)
            for v in outputs
        ]

    async def _upload(self, job: FileJob, name: str, data: bytes, operation: str) -> UploadResult:
        async def upload() -> UploadResult:
            return await self.uploader.upload(name, data)

        context = CallContext(
            app=self.name,
            operation=operation,
            idempotency_key=name,
            correlation_id=job.file_name,
            request_summary={
                "file_name": name,
                "bytes": len(data),
                "report_date": job.report_date.isoformat(),
            },
            describe=_describe,
        )
        return await self.guard.call(upload, context=context)


def announcement(
    facts: Manifest, *, manifest_name: str, uploaded_at: datetime, already_present: bool
) -> bytes:
    """The ``regulatory.reports`` value: UTF-8 JSON, keys in this order, amounts as strings."""
    if uploaded_at.tzinfo is None:
        raise ValueError("uploaded_at must be timezone-aware")
    body = {
        "report_date": facts.report_date.isoformat(),
        "file_name": facts.file_name,
        "manifest_name": manifest_name,
        "sha256": facts.sha256,
        "bytes": facts.bytes,
        "record_count": facts.record_count,
        "control_totals": facts.control_totals_json(),
        "uploaded_at": uploaded_at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "already_present": already_present,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _describe(result: UploadResult) -> tuple[str, dict[str, object]]:
    status = "ALREADY_PRESENT" if result.already_present else "UPLOADED"
    return status, {"remote_path": result.remote_path, "bytes": result.bytes, "sha256": result.sha256}


def build_regulatory_app(
    settings: RegulatorySettings,
    topics: AppTopics,
    codec: Codec,
    *,
    resilience: ResilienceConfig,
    breakers: BreakerRegistry,
    resilience_enabled: bool = True,
    keep_key_order: bool = True,
    pending_reader: PendingReader | None = None,
) -> RegulatoryApp:
    """The app as the runner builds it: the SFTP uploader behind the ``regulator-sftp`` guard.

    The per-attempt connect and read timeouts come from the endpoint's resilience policy, as
    for the HTTP adapters.  No I/O happens here.
    """
    policy = resilience.for_endpoint(ENDPOINT)
    sftp = settings.sftp.model_copy(update={"timeouts": policy.timeout.http()})
    guard_class = EndpointGuard if resilience_enabled else Unguarded
    return RegulatoryApp(
        codec=codec,
        uploader=SftpUploader(sftp),
        guard=guard_class(ENDPOINT, policy, breakers.get(ENDPOINT)),
        outbox=Outbox(settings.outbox_dir),
        settings=settings,
        topics=topics,
        keep_key_order=keep_key_order,
        pending_reader=pending_reader,
    )
