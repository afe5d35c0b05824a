"""Running a broker as a child process: start with output to a log file, stop gently, read the log tail."""

from __future__ import annotations

import atexit
import logging
import signal
import subprocess
import threading
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["LOG_TAIL_LINES", "BrokerProcess", "log_tail", "run_to_log"]

logger = logging.getLogger("processors_dev.devbroker")

#: How many log lines a start-failure message carries.
LOG_TAIL_LINES = 60

_live: weakref.WeakSet[BrokerProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip("\n")
    except FileNotFoundError:
        return ""


class BrokerProcess:
    """One child process whose standard output and error are appended to ``log_path``.

    It runs in its own session, so a Ctrl-C in the terminal reaches the parent only and the
    parent decides how to stop it.  Processes still alive when the interpreter exits are killed.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._command = list(command)
        self._log_path = log_path
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def spawn(self) -> None:
        self._log = self._log_path.open("ab")
        try:
            self._popen = subprocess.Popen(  # noqa: S603 - the harness builds the command line itself
                self._command,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            self._close_log()
            raise
        with _live_lock:
            _live.add(self)

    def exit_description(self) -> str | None:
        """``None`` while the process runs; otherwise how it ended."""
        if self._popen is None:
            return "the process was not started"
        code = self._popen.poll()
        if code is None:
            return None
        if code < 0:
            return f"the process was killed by signal {-code}"
        return f"the process exited with code {code}"

    def stop(self, grace_s: float) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL.  Idempotent."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            try:
                popen.send_signal(signal.SIGTERM)
                popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("broker process %d ignored SIGTERM for %g s; killing it", popen.pid, grace_s)
                popen.kill()
                popen.wait()
            except ProcessLookupError:
                popen.wait()
        self._close_log()
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or leave cleanly (a crash)."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()
        self._close_log()
        with _live_lock:
            _live.discard(self)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def run_to_log(
    command: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run a command to completion with its output appended to ``log_path``; return its exit code."""
    with log_path.open("ab") as log:
        try:
            completed = subprocess.run(  # noqa: S603 - the harness builds the command line itself
                list(command),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[devbroker] command timed out after {timeout_s:g} s\n".encode())
            return -1
    return completed.returncode


def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for process in leftovers:
        pid = process.pid
        if pid is not None:
            logger.warning("stopping broker process %d left running at exit", pid)
        process.stop(grace_s=10.0)


atexit.register(_kill_leftovers)
