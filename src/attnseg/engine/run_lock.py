"""One process owns a run folder at a time: ``RUN_DIR/.lock``.

The lock is an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock``, which holds JSON naming the holder (pid, host,
start time, command) so that a refused second run can say who owns the folder. The kernel drops a flock when its
process dies, however it dies (kill -9 included), so a lock file whose lock nobody holds is stale by definition:
the next run takes it over and says whose it was. Where the file system offers no flock (some network file
systems) the holder's pid is checked instead, which is only conclusive on the same host.

Releasing removes the file (then unlocks), and a taker checks after locking that the file it locked is still the
one at ``RUN_DIR/.lock``, so a run that opened the file just before another released it cannot end up holding a
removed file while a third run creates a new one.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from attnseg.errors import AttnsegError
from attnseg.fileio import process_alive

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check below is all there is
    fcntl = None  # type: ignore[assignment]


# Descriptors of the locks this process holds. A forked child (data loader workers) would share the locked file
# description and so keep the lock alive after this process died; children close their copies at once (the lock
# stays with the parent, whose descriptor remains open).
_HELD_DESCRIPTORS: set[int] = set()


def _close_held_in_child() -> None:
    for descriptor in list(_HELD_DESCRIPTORS):
        try:
            os.close(descriptor)
        except OSError:
            pass
    _HELD_DESCRIPTORS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLockedError(AttnsegError):
    """Another live process owns the run folder."""


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


def _read_holder(descriptor: int) -> dict[str, Any]:
    os.lseek(descriptor, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(descriptor, 65536):
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8"))
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _try_flock(descriptor: int) -> bool | None:
    """True: locked; False: someone else holds it; None: this file system cannot flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


class RunLock:
    """Exclusive ownership of a run folder for the life of one run (a context manager).

    Args:
        run_dir: the run folder (created if missing).
        command: what the holder runs, recorded for the message a refused run prints (default: ``sys.argv``).
        announce: where the take-over of a stale lock is reported (default: stderr).

    Raises:
        RunLockedError: on `acquire`, when a live process holds the lock; the message names it.
    """

    def __init__(self, run_dir: str | Path, command: str | None = None, announce: Any = None):
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self.announce = announce
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._descriptor is not None

    def acquire(self) -> RunLock:
        """Takes the lock (a stale one is taken over with a message) or raises `RunLockedError`."""
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # retried only when the file was replaced under us, which needs a racing release
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                if self._take(descriptor):
                    self._descriptor = descriptor
                    _HELD_DESCRIPTORS.add(descriptor)
                    return self
            except BaseException:
                os.close(descriptor)
                raise
            os.close(descriptor)
        raise RunLockedError(f"{self.path}: the lock file keeps being replaced; is another run starting here?")

    def _take(self, descriptor: int) -> bool:
        locked = _try_flock(descriptor)
        previous = _read_holder(descriptor)
        if locked is False:
            if previous and previous.get("pid") != os.getpid() and not self._holder_may_be_alive(previous):
                raise RunLockedError(f"{self.path.parent} is locked by a child of a run that has ended "
                                     f"({_describe(previous)}); retry once its processes have exited")
            raise RunLockedError(f"{self.path.parent} is in use by another run ({_describe(previous)}); wait for it "
                                 "to finish or choose another --out")
        if not self._is_current_file(descriptor):
            return False
        if locked is None and previous and self._holder_may_be_alive(previous):
            raise RunLockedError(f"{self.path.parent} is in use by another run ({_describe(previous)}; this file "
                                 f"system has no flock, so the pid was checked); delete {self.path} if it is gone")
        if previous:  # a holder's record with no live holder: the process died without releasing
            self._say(f"{self.path.parent}: taking over the stale lock of a run that is no longer running "
                      f"({_describe(previous)})")
        self._write_holder(descriptor)
        return True

    def _is_current_file(self, descriptor: int) -> bool:
        try:
            return os.path.samestat(os.fstat(descriptor), os.stat(self.path))
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder_may_be_alive(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return True  # another host's pid says nothing here
        return holder["pid"] != os.getpid() and process_alive(holder["pid"])

    def _write_holder(self, descriptor: int) -> None:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": self.command}
        data = (json.dumps(holder) + "\n").encode("utf-8")
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, data)
        os.fsync(descriptor)

    def _say(self, message: str) -> None:
        print(message, file=self.announce or sys.stderr, flush=True)

    def release(self) -> None:
        """Removes the lock file and drops the lock (nothing when not held)."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        _HELD_DESCRIPTORS.discard(descriptor)
        try:
            if self._is_current_file(descriptor):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
