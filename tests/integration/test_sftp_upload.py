"""The SFTP uploader against a real SFTP server (the sandbox regulator): no broker needed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from pydantic import SecretStr

from processors import context as record_context
from processors.adapters.sftp import (
    SftpAuthFailed,
    SftpHostKeyMismatch,
    SftpRejected,
    SftpSettings,
    SftpUnavailable,
    SftpUploader,
    UploadNotVerified,
)
from processors.errors import ConfigError, Permanent, Retriable
from processors.resilience.config import EndpointPolicy
from processors.resilience.guard import CallContext, EndpointGuard
from processors.resilience.retry import RetryPolicy
from processors_dev.sandbox.sftp import SFTP_PASSWORD_ENV, SftpRegulator

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct-horse-battery-staple"
DATA = b"record_type,event_id\r\n" + b"POLICY,e-1\r\n" * 5000
NAME = "REG_INS001_20240115.csv"


@pytest.fixture
async def regulator(tmp_path: Path) -> AsyncIterator[SftpRegulator]:
    async with SftpRegulator(tmp_path / "regulator", password=SecretStr(PASSWORD)) as server:
        yield server


def settings(regulator: SftpRegulator, **changes: object) -> SftpSettings:
    values: dict[str, object] = {
        "host": regulator.host,
        "port": regulator.port,
        "username": regulator.username,
        "password": PASSWORD,
        "known_host_key": regulator.host_key_line,
        "timeouts": {"connect_timeout_s": 5, "read_timeout_s": 10},
    }
    values.update(changes)
    return SftpSettings.model_validate(values)


async def uploader(regulator: SftpRegulator, **changes: object) -> SftpUploader:
    client = SftpUploader(settings(regulator, **changes))
    await client.start()
    return client


def guard() -> EndpointGuard:
    policy = EndpointPolicy(retry=RetryPolicy(max_attempts=3, initial_delay_ms=0, max_delay_ms=0))
    return EndpointGuard("regulator-sftp", policy)


async def test_an_upload_lands_under_its_final_name_with_nothing_left_behind(
    regulator: SftpRegulator,
) -> None:
    client = await uploader(regulator)
    result = await client.upload(NAME, DATA)
    assert result.already_present is False
    assert (result.name, result.remote_path, result.bytes) == (NAME, f"/{NAME}", len(DATA))
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    assert regulator.received() == {NAME: DATA}  # no .part left
    assert [(u.path, u.bytes_stored, u.fault) for u in regulator.uploads] == [
        (f"{NAME}.part", len(DATA), None)
    ]
    assert (regulator.root / NAME).read_bytes() == DATA  # the chroot is the regulator's root


async def test_a_re_upload_of_the_same_bytes_writes_nothing(regulator: SftpRegulator) -> None:
    client = await uploader(regulator)
    await client.upload(NAME, DATA)
    again = await client.upload(NAME, DATA)
    assert again.already_present is True
    assert again.sha256 == hashlib.sha256(DATA).hexdigest()
    assert len(regulator.uploads) == 1  # no second write
    assert regulator.logins == 2
    assert regulator.received() == {NAME: DATA}


async def test_a_different_file_of_the_same_name_is_replaced(regulator: SftpRegulator) -> None:
    client = await uploader(regulator)
    await client.upload(NAME, b"an older version")
    result = await client.upload(NAME, DATA)
    assert result.already_present is False
    assert regulator.received() == {NAME: DATA}


async def test_a_truncated_upload_is_detected_and_redone_by_the_guard(regulator: SftpRegulator) -> None:
    client = await uploader(regulator)
    regulator.truncate_next(1)
    with pytest.raises(UploadNotVerified, match=r"truncated: the server holds \d+ of \d+ bytes") as caught:
        await client.upload(NAME, DATA)
    assert isinstance(caught.value, Retriable)
    assert NAME not in regulator.received()  # a bad upload never gets the final name

    regulator.truncate_next(1)
    calls = record_context.enter_new()
    result = await guard().call(lambda: client.upload(NAME, DATA))
    assert result.already_present is False
    assert calls.calls == 2
    assert regulator.received()[NAME] == DATA
    assert [u.fault for u in regulator.uploads] == ["truncated", "truncated", None]


async def test_an_altered_upload_of_the_right_size_is_detected_by_its_checksum(
    regulator: SftpRegulator,
) -> None:
    client = await uploader(regulator)
    regulator.corrupt_next(1)
    with pytest.raises(UploadNotVerified, match="SHA-256 mismatch"):
        await client.upload(NAME, DATA)
    result = await guard().call(lambda: client.upload(NAME, DATA))
    assert result.already_present is False
    assert regulator.received()[NAME] == DATA


async def test_a_wrong_password_is_permanent_and_never_logged(
    regulator: SftpRegulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-" + PASSWORD[::-1]
    client = await uploader(regulator, password=wrong)
    context = CallContext(app="regulatory", operation="upload_csv", request_summary={"file_name": NAME})
    with pytest.raises(SftpAuthFailed, match="authentication failed") as caught:
        await guard().call(lambda: client.upload(NAME, DATA), context=context)
    assert isinstance(caught.value, Permanent)
    assert regulator.failed_logins == 1  # permanent: the guard did not try again
    assert regulator.received() == {}
    error = caught.value
    records = "\n".join(str(vars(record)) for record in caplog.records)  # messages and extras
    seen = "\n".join([caplog.text, records, str(error), repr(error), repr(client), repr(client.settings)])
    assert wrong not in seen
    assert PASSWORD not in seen
    names = {record.name for record in caplog.records}
    assert "processors.audit" in names  # the attempt was audited
    assert any(name.startswith("asyncssh") for name in names)  # the client's debug log was captured


async def test_a_host_key_other_than_the_pinned_one_is_refused(regulator: SftpRegulator) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    client = await uploader(regulator, known_host_key=other)
    with pytest.raises(SftpHostKeyMismatch) as caught:
        await client.upload(NAME, DATA)
    assert isinstance(caught.value, Permanent)
    assert regulator.logins == 0


async def test_a_known_hosts_line_pins_the_key_too(regulator: SftpRegulator) -> None:
    client = await uploader(regulator, known_host_key=regulator.known_hosts_line)
    assert (await client.upload(NAME, DATA)).already_present is False


async def test_refused_connections_and_writes_are_retriable(regulator: SftpRegulator) -> None:
    client = await uploader(regulator)
    regulator.refuse_next(1)
    with pytest.raises(SftpUnavailable) as caught:
        await client.upload(NAME, DATA)
    assert isinstance(caught.value, Retriable)
    assert regulator.refused_connections == 1

    regulator.refuse_next(1, "write")
    with pytest.raises(SftpUnavailable, match=r"write .*refused the write"):
        await client.upload(NAME, DATA)
    assert NAME not in regulator.received()

    regulator.refuse_next(1)
    result = await guard().call(lambda: client.upload(NAME, DATA))
    assert result.already_present is False
    assert regulator.received()[NAME] == DATA


async def test_a_server_that_is_not_listening_is_retriable(tmp_path: Path) -> None:
    async with SftpRegulator(tmp_path / "gone", password=SecretStr(PASSWORD)) as server:
        client = await uploader(server)
    with pytest.raises(SftpUnavailable, match="connect"):
        await client.upload(NAME, DATA)


async def test_a_missing_remote_directory_is_permanent(regulator: SftpRegulator) -> None:
    client = await uploader(regulator, remote_dir="/no/such/dir")
    with pytest.raises(SftpRejected, match="no such file or directory"):
        await client.upload(NAME, DATA)


async def test_files_go_to_the_remote_directory(regulator: SftpRegulator) -> None:
    (regulator.root / "inbound").mkdir()
    client = await uploader(regulator, remote_dir="/inbound")
    result = await client.upload(NAME, DATA)
    assert result.remote_path == f"/inbound/{NAME}"
    assert regulator.received() == {f"inbound/{NAME}": DATA}


async def test_names_that_are_paths_are_refused_before_connecting(regulator: SftpRegulator) -> None:
    client = await uploader(regulator)
    for name in ("../escape.csv", "a/b.csv", "..", ""):
        with pytest.raises(Permanent, match="not a plain file name"):
            await client.upload(name, DATA)
    assert regulator.logins == 0


async def test_an_unpinned_or_unreadable_host_key_stops_the_start(regulator: SftpRegulator) -> None:
    with pytest.raises(ConfigError, match="known_host_key is not set"):
        await SftpUploader(settings(regulator, known_host_key=None)).start()
    with pytest.raises(ConfigError, match="not a public key"):
        await SftpUploader(settings(regulator, known_host_key="ssh-ed25519 AAAAnot-a-key")).start()


async def test_the_sandbox_command_line_runs_the_regulator(tmp_path: Path) -> None:
    key_file = tmp_path / "host_key"
    command = [
        sys.executable, "-m", "processors_dev.sandbox.cli", "--port", "0",
        "--sftp", "--sftp-port", "0", "--sftp-root", str(tmp_path / "root"), "--sftp-host-key", str(key_file),
    ]  # fmt: skip
    env = {**os.environ, SFTP_PASSWORD_ENV: PASSWORD}
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, env=env)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not lines or not lines[-1].strip().startswith("SHA256:"):
                line = await process.stdout.readline()
                assert line, f"the sandbox exited early: {lines}"
                lines.append(line.decode())
        output = "".join(lines)
        assert PASSWORD not in output
        port = int(re.search(r"sftp://regulator@127\.0\.0\.1:(\d+)", output)[1])  # type: ignore[index]
        host_key = re.search(r"host key\s+(ssh-ed25519 \S+)", output)[1]  # type: ignore[index]
        assert key_file.stat().st_mode & 0o077 == 0  # the kept host key is private to its owner
        client = SftpUploader(SftpSettings(port=port, password=SecretStr(PASSWORD), known_host_key=host_key))
        await client.start()
        assert (await client.upload(NAME, DATA)).already_present is False
        assert (tmp_path / "root" / NAME).read_bytes() == DATA
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.communicate()
    assert process.returncode == 0
