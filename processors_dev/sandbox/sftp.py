"""A simulated regulator: a real SFTP server (asyncssh) with fault injection.

In the caller's event loop (tests, demo)::

    async with SftpRegulator(tmp_path / "regulator", password=SecretStr("s3cret")) as regulator:
        regulator.port                    # the bound port (port=0 picks a free one)
        regulator.host_key_line           # "ssh-ed25519 AAAA…": what the client pins
        regulator.truncate_next(1)        # the next upload keeps only half its bytes, says OK
        regulator.received()              # {"REG_INS001_20240115.csv": b"…", …}

or ``processors sandbox --sftp`` on the command line.

* A host key is generated at start (Ed25519, in memory) unless one is given, so every run
  has its own key: clients must pin :attr:`SftpRegulator.host_key_line` (or the
  ``known_hosts`` line, :attr:`SftpRegulator.known_hosts_line`).
* One user, password authentication only; the password is a ``SecretStr`` and is never
  logged.  No shell, exec, forwarding or SCP: the SFTP subsystem only.
* Every session is chrooted to ``root``: paths are relative to it, ``..`` cannot leave it.

Fault knobs, settable while the server runs (each counts down per upload or connection):

===========================  ================================================================
``truncate_next(n)``         the next ``n`` files opened for writing keep only the first half
                             of their bytes; the client is told every write succeeded
``corrupt_next(n)``          the next ``n`` uploads keep their size but one byte is flipped
``refuse_next(n)``           the next ``n`` connections are dropped before authentication
``refuse_next(n, "write")``  the next ``n`` uploads fail with an SFTP failure on first write
===========================  ================================================================

:attr:`SftpRegulator.uploads` keeps the newest ``max_uploads`` records (100,000 by default);
older ones are dropped from the list and counted in :attr:`SftpRegulator.dropped_uploads`
(the files stay on disk).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from pydantic import SecretStr

from processors.adapters._asyncssh import asyncssh

__all__ = [
    "DEFAULT_MAX_UPLOADS",
    "DEFAULT_SFTP_PASSWORD",
    "DEFAULT_SFTP_USERNAME",
    "SFTP_PASSWORD_ENV",
    "FaultStage",
    "SftpRegulator",
    "SftpUpload",
    "load_or_create_host_key",
]

log = logging.getLogger(__name__)

DEFAULT_SFTP_USERNAME: Final = "regulator"
DEFAULT_SFTP_PASSWORD: Final = "sandbox-sftp-password"  # noqa: S105 - the sandbox's documented default
SFTP_PASSWORD_ENV: Final = "SANDBOX_SFTP_PASSWORD"  # noqa: S105 - the name of the variable holding it

DEFAULT_MAX_UPLOADS: Final = 100_000
"""Upload records a regulator keeps by default (the newest)."""

FaultStage = Literal["connect", "write"]


@dataclass(frozen=True, slots=True)
class SftpUpload:
    """One file the regulator received (opened for writing, then closed)."""

    path: str
    """Path inside the root, POSIX style, without a leading slash."""
    bytes_stored: int
    fault: Literal["truncated", "corrupted", "refused"] | None = None


@dataclass
class _Faults:
    truncate: int = 0
    corrupt: int = 0
    refuse_connect: int = 0
    refuse_write: int = 0


@dataclass
class _State:
    """What every connection and session of one regulator shares."""

    root: Path
    username: str
    password: SecretStr
    faults: _Faults = field(default_factory=_Faults)
    uploads: deque[SftpUpload] = field(default_factory=lambda: deque(maxlen=DEFAULT_MAX_UPLOADS))
    dropped_uploads: int = 0
    logins: int = 0
    failed_logins: int = 0
    refused_connections: int = 0

    def record(self, upload: SftpUpload) -> None:
        """Keep ``upload`` in ``uploads``, dropping (and counting) the oldest when it is full."""
        if len(self.uploads) == self.uploads.maxlen:
            self.dropped_uploads += 1
        self.uploads.append(upload)


class SftpRegulator:
    """The regulator's SFTP server on ``host:port``; one-shot (``start()`` once, ``stop()`` once)."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = DEFAULT_SFTP_USERNAME,
        password: SecretStr | None = None,
        host_key: asyncssh.SSHKey | None = None,
        login_timeout_s: float = 30.0,
        max_uploads: int = DEFAULT_MAX_UPLOADS,
    ) -> None:
        if not username:
            raise ValueError("username must not be empty")
        if max_uploads < 1:
            raise ValueError("max_uploads must be at least 1")
        password = password if password is not None else SecretStr(DEFAULT_SFTP_PASSWORD)
        if not password.get_secret_value():
            raise ValueError("password must not be empty")
        self.host = host
        self._requested_port = port
        self._host_key = host_key
        self._login_timeout_s = login_timeout_s
        self._state = _State(
            root=Path(root), username=username, password=password, uploads=deque(maxlen=max_uploads)
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._port: int | None = None
        self._used = False

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else "not running"
        return f"SftpRegulator({where}, root={str(self._state.root)!r}, user={self._state.username!r})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._used:
            raise RuntimeError("an SftpRegulator starts once; create a new one")
        self._used = True
        self._state.root.mkdir(parents=True, exist_ok=True)
        if self._host_key is None:
            self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        state = self._state
        chroot = os.fsencode(state.root.resolve())

        def server_factory() -> asyncssh.SSHServer:
            return _RegulatorSsh(state)

        def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return _RegulatorSftp(chan, state, chroot)

        self._acceptor = await asyncssh.listen(
            self.host,
            self._requested_port,
            server_host_keys=[self._host_key],
            server_factory=server_factory,
            sftp_factory=sftp_factory,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=self._login_timeout_s,
        )
        self._port = self._acceptor.get_port()
        log.info("sandbox regulator listening on sftp://%s:%s", self.host, self._port)

    async def stop(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is None:
            return
        acceptor.close()
        await acceptor.wait_closed()
        self._port = None
        log.info("sandbox regulator stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ what clients need

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox regulator is not running")
        return self._port

    @property
    def root(self) -> Path:
        return self._state.root

    @property
    def username(self) -> str:
        return self._state.username

    @property
    def host_key(self) -> asyncssh.SSHKey:
        """The server's private host key (to keep the same key across restarts)."""
        if self._host_key is None:
            raise RuntimeError("the host key is generated at start")
        return self._host_key

    @property
    def host_key_line(self) -> str:
        """The public host key in OpenSSH form (``ssh-ed25519 AAAA…``): what a client pins."""
        return self.host_key.export_public_key().decode("ascii").strip()

    @property
    def known_hosts_line(self) -> str:
        """The ``known_hosts`` line for this server (``[host]:port ssh-ed25519 AAAA…``)."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:…``, as ``ssh-keygen -l`` prints it."""
        return self.host_key.get_fingerprint("sha256")

    # ------------------------------------------------------------------ faults and state

    def truncate_next(self, n: int = 1) -> None:
        """The next ``n`` uploads keep only the first half of their bytes and report success."""
        self._state.faults.truncate = _count(n)

    def corrupt_next(self, n: int = 1) -> None:
        """The next ``n`` uploads keep their size but have one byte flipped, and report success."""
        self._state.faults.corrupt = _count(n)

    def refuse_next(self, n: int = 1, stage: FaultStage = "connect") -> None:
        """The next ``n`` connections are dropped (``connect``) or uploads fail (``write``)."""
        if stage == "connect":
            self._state.faults.refuse_connect = _count(n)
        elif stage == "write":
            self._state.faults.refuse_write = _count(n)
        else:
            raise ValueError(f"stage must be 'connect' or 'write', not {stage!r}")

    def reset_faults(self) -> None:
        self._state.faults = _Faults()

    @property
    def uploads(self) -> list[SftpUpload]:
        """The files received, in order (a copy; the newest ``max_uploads``)."""
        return list(self._state.uploads)

    @property
    def dropped_uploads(self) -> int:
        """Upload records dropped from :attr:`uploads` to keep it within ``max_uploads``."""
        return self._state.dropped_uploads

    @property
    def logins(self) -> int:
        """Successful logins so far."""
        return self._state.logins

    @property
    def failed_logins(self) -> int:
        return self._state.failed_logins

    @property
    def refused_connections(self) -> int:
        return self._state.refused_connections

    def received(self) -> dict[str, bytes]:
        """Every regular file under the root (``.part`` files included) and its bytes."""
        return {name: path.read_bytes() for name, path in self._files()}

    def _files(self) -> Iterator[tuple[str, Path]]:
        root = self._state.root
        if not root.is_dir():
            return
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The private host key kept in ``path`` (OpenSSH format), created (mode 0600) when missing.

    Keeping the key across restarts keeps the pin a client was configured with valid.
    """
    if path.exists():
        try:
            return asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, OSError) as exc:
            raise ValueError(f"{path}: not a readable private key ({type(exc).__name__})") from exc
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    return key


def _count(n: int) -> int:
    if n < 0:
        raise ValueError("n must be ≥ 0")
    return n


class _RegulatorSsh(asyncssh.SSHServer):
    """Password authentication for the one configured user; connection refusals."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        faults = self._state.faults
        if faults.refuse_connect > 0:
            faults.refuse_connect -= 1
            self._state.refused_connections += 1
            log.info("sandbox regulator: refusing a connection (fault injection)")
            conn.close()

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        expected = self._state.password.get_secret_value().encode()
        user_ok = hmac.compare_digest(username.encode(), self._state.username.encode())
        password_ok = hmac.compare_digest(password.encode(), expected)
        if user_ok and password_ok:
            self._state.logins += 1
            return True
        self._state.failed_logins += 1
        log.info("sandbox regulator: login refused")
        return False


class _Upload:
    """A file opened for writing, and the fault that will hit it when it closes."""

    __slots__ = ("fault", "local_path", "path")

    def __init__(
        self, path: str, local_path: bytes, fault: Literal["truncated", "corrupted", "refused"] | None
    ) -> None:
        self.path = path
        self.local_path = local_path
        self.fault = fault


class _RegulatorSftp(asyncssh.SFTPServer):
    """The default local-filesystem SFTP server, chrooted, recording uploads and injecting faults."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], state: _State, chroot: bytes) -> None:
        super().__init__(chan, chroot=chroot)
        self._state = state
        self._chroot_path = chroot
        self._uploads: dict[int, _Upload] = {}

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        file_obj = super().open(path, pflags, attrs)
        if pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND):
            local = self.map_path(path)
            self._uploads[id(file_obj)] = _Upload(self._relative(local), local, self._take_fault())
        return file_obj

    def _take_fault(self) -> Literal["truncated", "corrupted", "refused"] | None:
        faults = self._state.faults
        if faults.refuse_write > 0:
            faults.refuse_write -= 1
            return "refused"
        if faults.truncate > 0:
            faults.truncate -= 1
            return "truncated"
        if faults.corrupt > 0:
            faults.corrupt -= 1
            return "corrupted"
        return None

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        upload = self._uploads.get(id(file_obj))
        if upload is not None and upload.fault == "refused":
            raise asyncssh.SFTPFailure("the regulator refused the write (fault injection)")
        written: int = super().write(file_obj, offset, data)  # type: ignore[assignment]
        return written

    def close(self, file_obj: object) -> None:
        upload = self._uploads.pop(id(file_obj), None)
        super().close(file_obj)
        if upload is None:
            return
        size = os.stat(upload.local_path).st_size
        if upload.fault == "truncated":
            size //= 2
            os.truncate(upload.local_path, size)
        elif upload.fault == "corrupted" and size:
            with open(upload.local_path, "r+b") as stored:
                stored.seek(size // 2)
                byte = stored.read(1)
                stored.seek(size // 2)
                stored.write(bytes([byte[0] ^ 0xFF]))
        self._state.record(SftpUpload(upload.path, size, upload.fault))

    def _relative(self, local: bytes) -> str:
        relative = os.path.relpath(local, self._chroot_path)
        return os.fsdecode(relative).replace(os.sep, "/")
