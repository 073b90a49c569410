"""The local-folder backend: files under one root, the embedded default.

Writes are atomic (a temp file in the same folder, fsync, rename) and private (files 0600 in
0700 folders), so a reader or a crash never sees half a file under a real key. The blocking
file calls run in a thread, one trip per operation where possible.

A rename (and a new folder) is durable only once its folder is fsynced. :meth:`persist` does
that for the folders of the keys it is given and the parents of the folders made since, as
group commit (shared/batch.py): concurrent calls share one round of folder fsyncs, each folder
once, issued together so the file system commits them as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat as stat_mode
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from shared.batch import Batcher
from shared.storage.base import (
    TMP_SUFFIX,
    ObjectInfo,
    ObjectNotFound,
    ObjectReader,
    Storage,
    check_key,
)

CHUNK_BYTES = 256 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700
# Folder fsyncs in flight at once (each in a thread) for one round of persist.
DIR_SYNC_THREADS = 8


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=st.st_size,
        etag=f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
        last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
    )


class _FileReader(ObjectReader):
    def __init__(self, handle: BinaryIO, info: ObjectInfo, start: int, end: int) -> None:
        self.info = info
        self._handle = handle
        self._left = max(0, end - start)

    def _read(self) -> bytes:
        data = self._handle.read(min(CHUNK_BYTES, self._left))
        self._left -= len(data)
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while self._left > 0:
                chunk = await asyncio.to_thread(self._read)
                if not chunk:
                    break
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._handle.close()


class LocalStorage(Storage):
    """Files under one root folder."""

    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._root_private = False
        # Folders made whose entry in their parent is not yet known to be durable.
        self._made: set[Path] = set()
        self._dir_sync: Batcher[Path, None] = Batcher(
            self._sync_dirs, max_batch=1024, max_flushes=1)

    def path(self, key: str) -> Path:
        """The absolute path of ``key``; refuses keys that leave the root."""
        return self.root.joinpath(*check_key(key).parts)

    def _close_root(self) -> None:
        """Create the root 0700 or, made open by an older genq, take away its group and other
        access (once per instance)."""
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        mode = stat_mode.S_IMODE(self.root.stat().st_mode)
        if mode & 0o077:
            # Not ours to change (a shared volume owned by another user): leave it.
            with contextlib.suppress(PermissionError):
                self.root.chmod(mode & ~0o077)
        self._root_private = True

    def _mkdirs(self, folder: Path) -> None:
        """Create ``folder`` and any missing parent under the root, each 0700. The common
        cases cost one system call: the folder exists, or only it is missing."""
        if not self._root_private:
            self._close_root()
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            return
        except FileNotFoundError:
            if self.root not in folder.parents:  # the root itself, and whatever it is in
                folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                return
            self._mkdirs(folder.parent)
            try:
                folder.mkdir(mode=DIR_MODE)
            except FileExistsError:
                return
        self._made.add(folder)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Open a temp file for ``key``; on clean exit it is fsynced and renamed into place.

        Blocking: call from a thread.
        """
        final = self.path(key)
        self._mkdirs(final.parent)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        handle = os.fdopen(fd, "wb")
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, final)
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            self._remove_empty_folders(final)
            raise

    async def persist(self, keys: Sequence[str]) -> None:
        """fsync the folders of ``keys`` (their renames) and the parents of the folders made
        since the last round (their entries); :class:`FileNotFoundError` if a folder is
        gone."""
        folders = {self.path(key).parent for key in keys}
        made, self._made = self._made, set()
        folders.update(folder.parent for folder in made)
        try:
            await asyncio.gather(*(self._dir_sync(folder) for folder in folders))
        except BaseException:
            self._made.update(made)  # not known to be durable: the next round tries again
            raise

    async def _sync_dirs(self, folders: list[Path]) -> list[BaseException | None]:
        """One round: every distinct folder fsynced once, up to DIR_SYNC_THREADS at a time."""
        gate = asyncio.Semaphore(DIR_SYNC_THREADS)

        async def one(folder: Path) -> BaseException | None:
            async with gate:
                try:
                    await asyncio.to_thread(_fsync_dir, folder)
                except OSError as exc:
                    return exc
                return None

        distinct = list(dict.fromkeys(folders))
        done = dict(zip(distinct, await asyncio.gather(*(one(f) for f in distinct)),
                        strict=True))
        return [done[folder] for folder in folders]

    def _remove_empty_folders(self, path: Path) -> None:
        """Remove the job and user folders above ``path`` if nothing else is in them (a
        racing writer recreates them)."""
        for parent in (path.parent, path.parent.parent):
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def write_bytes(self, key: str, data: bytes) -> int:
        """Write ``data`` atomically; return its size. Blocking: call from a thread."""
        with self.writer(key) as handle:
            handle.write(data)
        return len(data)

    def delete_sync(self, key: str) -> bool:
        """:meth:`delete`, blocking; also removes the emptied job and user folders."""
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._remove_empty_folders(path)
        return True

    async def put(self, key: str, chunks: AsyncIterable[bytes], *,
                  content_type: str | None = None) -> int:
        writer = self.writer(key)
        handle = await asyncio.to_thread(writer.__enter__)
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
        except BaseException as exc:
            # Close and remove the temp file; no fsync on this path, so no need for a thread.
            writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(writer.__exit__, None, None, None)
        return total

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> int:
        # One trip to a thread, which makes nothing but system calls there.
        return await asyncio.to_thread(self.write_bytes, key, data)

    def _stat(self, key: str) -> ObjectInfo:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"nothing stored under {key!r}") from exc
        if not stat_mode.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"nothing stored under {key!r}")
        return _info(key, st)

    async def stat(self, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self._stat, key)

    def _open(self, key: str, start: int, end: int | None) -> _FileReader:
        try:
            handle = self.path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"nothing stored under {key!r}") from exc
        try:
            info = _info(key, os.fstat(handle.fileno()))
            stop = info.size if end is None else min(end, info.size)
            handle.seek(start)
        except BaseException:
            handle.close()
            raise
        return _FileReader(handle, info, start, stop)

    async def open_range(self, key: str, start: int = 0, end: int | None = None
                         ) -> ObjectReader:
        return await asyncio.to_thread(self._open, key, start, end)

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self.delete_sync, key)

    def _copy(self, src: str, dst: str) -> None:
        try:
            source = self.path(src).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"nothing stored under {src!r}") from exc
        with source, self.writer(dst) as target:
            shutil.copyfileobj(source, target, CHUNK_BYTES)

    async def copy(self, src: str, dst: str) -> None:
        await asyncio.to_thread(self._copy, src, dst)

    def _scan(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        # Walk only the folder the prefix names, then filter by the whole prefix.
        folder = self.root
        if "/" in prefix:
            folder = self.path(prefix.rsplit("/", 1)[0])
        if not folder.is_dir():
            return found
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = os.path.join(dirpath, name)
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append(_info(key, os.stat(path)))
        return found

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._scan, prefix):
            yield info

    async def presign(self, key: str, ttl_s: int) -> str | None:
        check_key(key)
        return None
