"""Workspace asset storage on the local filesystem.

Keys are relative POSIX paths ``<user_id>/<job_id>/<index>.<ext>``; ``workspace_assets``
stores the key in ``temp_storage_path``. Writes are atomic (temp file in the same folder, fsync,
rename), so a reader or a crash never sees half a file under a real key. Files are written 0600
and folders 0700, and the root is made 0700 at the first write: only genq's own user can read
what it stores.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

TMP_SUFFIX = ".part"
FILE_MODE = 0o600
DIR_MODE = 0o700


class StorageKeyError(ValueError):
    """A key that would escape the storage root or is malformed."""


def asset_key(user_id: uuid.UUID, job_id: uuid.UUID, index: int, ext: str) -> str:
    """The storage key of output ``index`` of a job."""
    if index < 0 or not ext.isalnum():
        raise StorageKeyError(f"bad asset index or extension: {index!r}, {ext!r}")
    return f"{user_id}/{job_id}/{index}.{ext}"


class LocalStorage:
    """Files under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._root_private = False

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and the missing folders between it and the root, each 0700; the
        root itself is created 0700 or, made by an older genq, loses its group and other access."""
        if not self._root_private:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            mode = stat.S_IMODE(self.root.stat().st_mode)
            if mode & 0o077:
                # Not ours to change (a shared volume owned by another user): leave it.
                with contextlib.suppress(PermissionError):
                    self.root.chmod(mode & ~0o077)
            self._root_private = True
        missing = []
        while folder != self.root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=DIR_MODE)

    def path(self, key: str) -> Path:
        """The absolute path of ``key``; refuses keys that leave the root."""
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise StorageKeyError(f"bad storage key {key!r}")
        return self.root.joinpath(*pure.parts)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Open a temp file for ``key``; on clean exit it is fsynced and renamed into place."""
        final = self.path(key)
        self._make_dirs(final.parent)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        handle = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb")
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, final)
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise

    def write_bytes(self, key: str, data: bytes) -> int:
        """Write ``data`` atomically; return its size."""
        with self.writer(key) as handle:
            handle.write(data)
        return len(data)

    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        """Size in bytes of the stored file."""
        return self.path(key).stat().st_size

    def open(self, key: str) -> BinaryIO:
        """Open the stored file for reading."""
        return self.path(key).open("rb")

    def delete(self, key: str) -> bool:
        """Delete the file; a file already gone is fine. Returns whether one was removed."""
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Remove now-empty job and user folders; a racing writer recreates them.
        for parent in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()
        return True
