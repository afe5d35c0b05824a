"""The regulator's SFTP server: upload one file, verified, atomically, idempotently.

``SftpUploader.upload(name, data)`` is one attempt (the endpoint guard around it retries):

1. connect with the server's host key pinned from the settings (never trust on first use),
   password authentication only, within ``connect_timeout_s``;
2. when ``<remote_dir>/<name>`` already exists with the same size and SHA-256, return
   ``already_present=True`` and write nothing (a re-run after a crash or a replay);
3. otherwise write ``<name>.part``, check the size the server reports and read the file back
   to check its SHA-256: a truncated or altered upload raises :class:`UploadNotVerified`
   (``Retriable``) and is written again on the next attempt;
4. rename ``<name>.part`` to ``<name>``, replacing an older file of that name
   (``posix-rename@openssh.com``; servers without it get remove + rename).

Every SFTP operation runs within ``read_timeout_s``.  Failures are translated here:

=============================================  =============================================
wrong user name or password                    :class:`SftpAuthFailed` (``Permanent``)
host key differs from the pinned one           :class:`SftpHostKeyMismatch` (``Permanent``)
remote directory missing, permission denied    :class:`SftpRejected` (``Permanent``)
connection refused, reset or lost; timeouts    :class:`SftpUnavailable` (``Retriable``)
any other SFTP failure (disk full, failure)    :class:`SftpUnavailable` (``Retriable``)
=============================================  =============================================

The password reaches asyncssh only; no message, log line or repr of this module holds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Final, NoReturn

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from processors.adapters._asyncssh import asyncssh
from processors.adapters.http import TimeoutSettings
from processors.errors import ConfigError, IntegrationError, Permanent, Retriable

__all__ = [
    "ENDPOINT",
    "SftpAuthFailed",
    "SftpHostKeyMismatch",
    "SftpRejected",
    "SftpSettings",
    "SftpUnavailable",
    "SftpUploader",
    "UploadNotVerified",
    "UploadResult",
    "parse_host_key",
]

ENDPOINT: Final = "regulator-sftp"
"""The breaker and resilience name of the regulator's SFTP server."""

PART_SUFFIX: Final = ".part"


class SftpSettings(BaseModel):
    """Where and how to reach the regulator's SFTP server.

    ``known_host_key`` is the server's public host key, either as OpenSSH writes a public key
    (``ssh-ed25519 AAAA…``) or as a ``known_hosts`` line (``[host]:port ssh-ed25519 AAAA…``,
    whose host pattern is ignored: the key itself is pinned).  Without it nothing connects.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=2222, ge=1, le=65535)
    username: str = Field(default="regulator", min_length=1)
    password: SecretStr = SecretStr("sandbox-sftp-password")  # the sandbox regulator's default
    known_host_key: str | None = None
    remote_dir: str = "/"
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("must be a directory path on the server")
        return value


@dataclass(frozen=True, slots=True)
class UploadResult:
    name: str
    remote_path: str
    bytes: int
    sha256: str
    already_present: bool


class SftpAuthFailed(Permanent):
    """The server refused the user name or password."""


class SftpHostKeyMismatch(Permanent):
    """The server's host key is not the pinned one (misconfiguration, or someone in between)."""


class SftpRejected(Permanent):
    """The server refused the operation for good (no such directory, permission denied)."""


class SftpUnavailable(Retriable):
    """The server could not be reached or failed the operation; trying again may work."""


class UploadNotVerified(Retriable):
    """The uploaded bytes are not the ones sent (truncated or altered); the upload is redone."""


def parse_host_key(text: str) -> asyncssh.SSHKey:
    """The public key of an OpenSSH public key line or a ``known_hosts`` line."""
    fields = text.strip().split()
    if not fields:
        raise ConfigError("regulator SFTP: known_host_key is empty")
    # A known_hosts line starts with its host pattern; a public key line with the key type.
    if len(fields) >= 3 and not _looks_like_key_type(fields[0]) and _looks_like_key_type(fields[1]):
        fields = fields[1:]
    try:
        return asyncssh.import_public_key(" ".join(fields[:2]))
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(f"regulator SFTP: known_host_key is not a public key: {exc}") from exc


def _looks_like_key_type(field: str) -> bool:
    return field.startswith(("ssh-", "ecdsa-", "sk-"))


class SftpUploader:
    """One SFTP connection per upload attempt; see the module docstring."""

    endpoint = ENDPOINT

    def __init__(self, settings: SftpSettings) -> None:
        self.settings = settings
        self._host_key: asyncssh.SSHKey | None = None
        self._where = f"sftp://{settings.username}@{settings.host}:{settings.port}"

    def __repr__(self) -> str:
        return f"SftpUploader({self._where}, remote_dir={self.settings.remote_dir!r})"

    async def start(self) -> None:
        """Check the pinned host key (no network): a bad one is a :class:`ConfigError` now."""
        if self.settings.known_host_key is None:
            raise ConfigError(
                "regulator SFTP: known_host_key is not set; pin the server's public host key "
                "(e.g. PROCESSORS_REGULATORY__SFTP__KNOWN_HOST_KEY='ssh-ed25519 AAAA…')"
            )
        self._host_key = parse_host_key(self.settings.known_host_key)

    async def close(self) -> None:
        """Nothing stays open between uploads."""

    def remote_path(self, name: str) -> str:
        return posixpath.join(self.settings.remote_dir, name)

    async def upload(self, name: str, data: bytes) -> UploadResult:
        _check_name(name)
        final = self.remote_path(name)
        part = final + PART_SUFFIX
        digest = hashlib.sha256(data).hexdigest()
        size = len(data)
        async with self._sftp() as sftp:
            present = await self._size(sftp, final)
            if present == size and _sha256(await self._read(sftp, final, name)) == digest:
                return UploadResult(name, final, size, digest, already_present=True)
            await self._write(sftp, part, data, name)
            stored = await self._size(sftp, part) or 0
            if stored != size:
                raise UploadNotVerified(
                    f"{self._where}: upload of {name} truncated: the server holds {stored} of {size} bytes"
                )
            if _sha256(await self._read(sftp, part, name)) != digest:
                raise UploadNotVerified(
                    f"{self._where}: upload of {name} altered: the bytes read back differ (SHA-256 mismatch)"
                )
            await self._rename(sftp, part, final, name)
        return UploadResult(name, final, size, digest, already_present=False)

    # ------------------------------------------------------------------ connection

    @asynccontextmanager
    async def _sftp(self) -> AsyncIterator[asyncssh.SFTPClient]:
        if self._host_key is None:
            await self.start()
        host_key = self._host_key
        assert host_key is not None
        settings = self.settings
        timeout_s = settings.timeouts.connect_timeout_s
        conn: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                conn = await asyncssh.connect(
                    settings.host,
                    settings.port,
                    username=settings.username,
                    password=settings.password.get_secret_value(),
                    known_hosts=([host_key], [], []),
                    client_keys=None,
                    agent_path=None,
                    config=None,
                    preferred_auth="password",
                    connect_timeout=timeout_s,
                )
                sftp = await conn.start_sftp_client()
        except Exception as exc:
            if conn is not None:
                conn.abort()
            self._fail(exc, "connect")
        try:
            yield sftp
        finally:
            sftp.exit()
            conn.close()
            try:
                async with asyncio.timeout(timeout_s):
                    await conn.wait_closed()
            except TimeoutError:
                conn.abort()

    def _fail(self, exc: Exception, what: str) -> NoReturn:
        """Raise the project error for ``exc`` (chained), or ``exc`` itself when it is not ours to map."""
        translated = self._translate(exc, what)
        if translated is None:
            raise exc
        raise translated from exc

    def _translate(self, exc: Exception, what: str) -> IntegrationError | None:
        where = self._where
        if isinstance(exc, asyncssh.PermissionDenied):
            return SftpAuthFailed(f"{where}: authentication failed (user name or password refused)")
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return SftpHostKeyMismatch(f"{where}: the server's host key is not the pinned known_host_key")
        if isinstance(exc, TimeoutError):
            return SftpUnavailable(f"{where}: {what} timed out")
        if isinstance(exc, (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath)):
            return SftpRejected(f"{where}: {what}: no such file or directory")
        if isinstance(exc, (asyncssh.SFTPPermissionDenied, asyncssh.SFTPWriteProtect)):
            return SftpRejected(f"{where}: {what}: permission denied")
        if isinstance(exc, asyncssh.SFTPError):
            return SftpUnavailable(f"{where}: {what}: {type(exc).__name__}: {exc.reason}")
        if isinstance(exc, asyncssh.DisconnectError):
            return SftpUnavailable(f"{where}: {what}: disconnected ({type(exc).__name__}: {exc.reason})")
        if isinstance(exc, asyncssh.ChannelOpenError):
            return SftpUnavailable(f"{where}: {what}: the SFTP subsystem was refused ({exc.reason})")
        if isinstance(exc, OSError):
            return SftpUnavailable(f"{where}: {what}: {type(exc).__name__}")
        return None

    # ------------------------------------------------------------------ operations

    async def _size(self, sftp: asyncssh.SFTPClient, path: str) -> int | None:
        """The size of ``path``, None when there is no such file."""
        try:
            async with asyncio.timeout(self.settings.timeouts.read_timeout_s):
                attrs = await sftp.stat(path)
        except asyncssh.SFTPNoSuchFile:
            return None
        except Exception as exc:
            self._fail(exc, f"stat {posixpath.basename(path)}")
        return attrs.size

    async def _read(self, sftp: asyncssh.SFTPClient, path: str, name: str) -> bytes:
        try:
            async with asyncio.timeout(self.settings.timeouts.read_timeout_s):
                async with sftp.open(path, "rb") as remote:
                    data: bytes = await remote.read()
        except Exception as exc:
            self._fail(exc, f"read back {name}")
        return data

    async def _write(self, sftp: asyncssh.SFTPClient, path: str, data: bytes, name: str) -> None:
        try:
            async with asyncio.timeout(self.settings.timeouts.read_timeout_s):
                async with sftp.open(path, "wb") as remote:
                    await remote.write(data)
        except Exception as exc:
            self._fail(exc, f"write {posixpath.basename(path)}")

    async def _rename(self, sftp: asyncssh.SFTPClient, part: str, final: str, name: str) -> None:
        try:
            async with asyncio.timeout(self.settings.timeouts.read_timeout_s):
                try:
                    await sftp.posix_rename(part, final)
                except asyncssh.SFTPOpUnsupported:
                    with suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(final)
                    await sftp.rename(part, final)
        except Exception as exc:
            self._fail(exc, f"rename {posixpath.basename(part)} to {name}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise Permanent(f"regulator SFTP: {name!r} is not a plain file name")
