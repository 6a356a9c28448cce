"""Writing files so that nothing partial ever sits under a final name.

Every file attnseg writes goes to a temporary name in the same folder and is renamed over the final name once it
is complete (``os.replace`` is atomic on POSIX). A process killed mid-write leaves only a temporary, named
``.<final name>.<pid>.<random>.attnseg-tmp<final suffix>`` (the suffix kept, because writers such as
``cv2.imwrite`` and ``np.save`` choose the format by it); `remove_stale_temporaries` deletes those whose writing process is no
longer alive, so a re-run cleans up after a killed one without touching the temporaries of a live one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".attnseg-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+" + re.escape(TEMP_SUFFIX) + r"(\.[^.]*)?$")


def temporary_path_for(path: str | Path) -> Path:
    """A fresh, unused temporary path beside `path` (created empty), tagged with this process's id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                  suffix=TEMP_SUFFIX + path.suffix)
    # mkstemp makes the file 0600; the final file should have the permissions any other written file gets.
    os.fchmod(handle, 0o666 & ~_umask())
    os.close(handle)
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(folder: Path) -> None:
    try:  # makes the rename itself durable; some file systems refuse to open folders
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s content to; on success it is renamed to `path`.

    For writers that take a file name (``cv2.imwrite``, ``np.save``, ONNX, OpenVINO). On an exception the
    temporary is removed and `path` keeps its old content, if it had any. `durable` also fsyncs the file and the
    folder (checkpoints), at the cost of a disk flush.
    """
    path = Path(path)
    temp = temporary_path_for(path)
    try:
        yield temp
        if durable:
            with open(temp, "rb+") as stream:
                os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, durable: bool = False, **kwargs: Any) -> Iterator[IO[Any]]:
    """``open`` for writing (``"w"`` or ``"wb"``) whose result appears under `path` only once it is closed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path, durable=durable) as temp:
        with open(temp, mode, **kwargs) as stream:
            yield stream
            if durable:
                stream.flush()
                os.fsync(stream.fileno())


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8", durable=durable) as stream:
        stream.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """Writes `data` to `path` atomically."""
    with atomic_open(path, "wb", durable=durable) as stream:
        stream.write(data)
    return Path(path)


def atomic_write_with(path: str | Path, writer: Callable[[Path], Any], *, durable: bool = False) -> Path:
    """Calls ``writer(temporary_path)`` and renames the result to `path`; `writer` returning False is a failure
    (as ``cv2.imwrite`` reports one)."""
    with atomic_path(path, durable=durable) as temp:
        if writer(temp) is False:
            raise OSError(f"could not write {path}")
    return Path(path)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Deletes the temporaries that killed attnseg processes left under `folder`; returns what it removed.

    Only files named by `temporary_path_for` whose process id is no longer running are removed, so a folder can be
    cleaned while another attnseg process writes into it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{TEMP_SUFFIX}*"
    candidates = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for candidate in candidates:
        match = _TEMP_NAME.match(candidate.name)
        if match is None or not candidate.is_file() or process_alive(int(match.group(1))):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed
