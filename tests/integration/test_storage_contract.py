"""One storage contract, run against both backends: the local folder (in a tmp folder) and S3
(a real S3-compatible server on 127.0.0.1, moto in server mode). What one backend promises the
other must keep, so genq behaves the same whichever ``GENQ_STORAGE_URL`` names."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.settings import load_settings
from shared.storage import (
    LocalStorage,
    ObjectNotFound,
    Storage,
    StorageKeyError,
    asset_key,
    open_storage,
)
from tests.s3_support import S3Server


@pytest.fixture(params=["file", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Storage]:
    if request.param == "file":
        backend = open_storage(load_settings(storage_url=f"file://{tmp_path / 'assets'}"))
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket = s3.new_bucket()
        for name, value in s3.env().items():
            if name.startswith("AWS_"):
                monkeypatch.setenv(name, value)
        backend = open_storage(load_settings(
            storage_url=f"s3://{bucket}/assets", s3_endpoint_url=s3.endpoint_url,
            s3_region="us-east-1",
        ))
    assert backend.scheme == request.param
    yield backend
    await backend.aclose()


def _key(index: int = 0, ext: str = "png") -> str:
    return asset_key(uuid.uuid4(), uuid.uuid4(), index, ext)


async def _stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_put_stream_then_stat_and_read(store: Storage) -> None:
    key = _key()
    assert await store.put(key, _stream(b"hello ", b"world")) == 11
    info = await store.stat(key)
    assert (info.key, info.size) == (key, 11)
    assert info.etag.startswith('"') and info.etag.endswith('"')
    assert await store.read_bytes(key) == b"hello world"


async def test_ranges(store: Storage) -> None:
    key = _key(ext="mp4")
    data = bytes(range(256)) * 40
    await store.put_bytes(key, data)
    assert await store.read_bytes(key, 0, 10) == data[:10]
    assert await store.read_bytes(key, 5000, 5100) == data[5000:5100]
    assert await store.read_bytes(key, len(data) - 7) == data[-7:]
    reader = await store.open_range(key, 100, 200)
    assert reader.info.size == len(data)
    assert b"".join([c async for c in reader.chunks()]) == data[100:200]


async def test_large_stream_is_multipart_and_whole(store: Storage) -> None:
    key = _key(ext="mp4")
    part = os.urandom(1024 * 1024)
    size = await store.put(key, _stream(*[part] * 12))  # 12 MiB: three S3 parts
    assert size == 12 * len(part)
    assert (await store.stat(key)).size == size
    assert await store.read_bytes(key, 11 * len(part) + 5, 11 * len(part) + 15) == part[5:15]


async def test_failed_stream_stores_nothing(store: Storage) -> None:
    key = _key()

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(6 * 1024 * 1024)
        raise RuntimeError("download failed")

    with pytest.raises(RuntimeError, match="download failed"):
        await store.put(key, broken())
    with pytest.raises(ObjectNotFound):
        await store.stat(key)
    assert [i.key async for i in store.list()] == []


async def test_overwrite_replaces(store: Storage) -> None:
    key = _key()
    await store.put_bytes(key, b"one")
    await store.put_bytes(key, b"second")
    assert await store.read_bytes(key) == b"second"


async def test_missing_objects(store: Storage) -> None:
    key = _key()
    with pytest.raises(ObjectNotFound):
        await store.stat(key)
    with pytest.raises(ObjectNotFound):
        await store.open_range(key)
    with pytest.raises(ObjectNotFound):
        await store.copy(key, _key())
    await store.delete(key)  # already gone is fine


async def test_delete(store: Storage) -> None:
    key = _key()
    await store.put_bytes(key, b"abc")
    assert await store.delete(key) is True
    with pytest.raises(ObjectNotFound):
        await store.stat(key)
    assert [i.key async for i in store.list()] == []


async def test_copy(store: Storage) -> None:
    src, dst = _key(), _key(1)
    await store.put_bytes(src, b"original")
    await store.copy(src, dst)
    assert await store.read_bytes(dst) == b"original"
    assert await store.read_bytes(src) == b"original"


async def test_list_by_prefix(store: Storage) -> None:
    user, job_a, job_b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    keys = [asset_key(user, job_a, 0, "png"), asset_key(user, job_a, 1, "png"),
            asset_key(user, job_b, 0, "mp4"), asset_key(uuid.uuid4(), job_a, 0, "png")]
    for key in keys:
        await store.put_bytes(key, key.encode())
    assert sorted([i.key async for i in store.list(f"{user}/{job_a}/")]) == sorted(keys[:2])
    assert sorted([i.key async for i in store.list(f"{user}/")]) == sorted(keys[:3])
    listed = {i.key: i.size async for i in store.list()}
    assert listed == {k: len(k) for k in keys}


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "", "a//b", "a/"])
async def test_keys_cannot_escape(store: Storage, key: str) -> None:
    with pytest.raises(StorageKeyError):
        await store.put_bytes(key, b"x")
    with pytest.raises(StorageKeyError):
        await store.stat(key)


async def test_presign(store: Storage) -> None:
    key = _key()
    await store.put_bytes(key, b"\x89PNG signed", content_type="image/png")
    url = await store.presign(key, 60)
    if store.scheme == "file":
        assert url is None  # the API signs /v1/files URLs for the local folder
        return
    assert url is not None
    async with httpx.AsyncClient() as client:  # no credentials: the URL carries them
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG signed"
    assert response.headers["content-type"] == "image/png"
    job, name = key.split("/")[1:]
    assert response.headers["content-disposition"] == f'inline; filename="{job}-{name}"'
    assert response.headers["cache-control"] == "private, max-age=3600"


async def test_local_files_are_private(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    key = _key()
    await store.put_bytes(key, b"abc")
    path = tmp_path / "root" / key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert await store.delete(key)
    assert list((tmp_path / "root").iterdir()) == []  # emptied job and user folders go too


_PERSIST_SCRIPT = """
import asyncio, sys, uuid
from pathlib import Path
from shared.storage import LocalStorage, asset_key

async def main() -> None:
    store = LocalStorage(Path(sys.argv[1]))
    user = uuid.uuid4()
    first, second = asset_key(user, uuid.uuid4(), 0, "png"), asset_key(user, uuid.uuid4(), 0, "png")
    thumb = first.replace("0.png", "0.thumb.webp")
    for key in (first, thumb, second):
        await store.put_bytes(key, b"x")
    # Two jobs finishing at once: one round of folder fsyncs, each folder once.
    await asyncio.gather(store.persist([first, thumb]), store.persist([second]))
    print(first, second)

asyncio.run(main())
"""


async def test_local_persist_fsyncs_each_new_folder_and_its_parent_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = await asyncio.create_subprocess_exec(
        "strace", "-f", "-qq", "-y", "-e", "trace=fsync", "-o", str(tmp_path / "trace"),
        sys.executable, "-c", _PERSIST_SCRIPT, str(root),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    first, second = out.decode().split()
    # "fsync(7</path>) = 0", or "fsync(7</path> <unfinished ...>" when threads overlap.
    synced = re.findall(r"fsync\(\d+<([^>]*)>", (tmp_path / "trace").read_text())
    folders = [Path(p) for p in synced if Path(p).is_dir()]
    files = [p for p in synced if not Path(p).is_dir()]
    assert len(files) == 3  # each object's temp file, before its rename
    job1, job2 = (root / first).parent, (root / second).parent
    assert sorted(folders) == sorted([root.resolve(), job1.parent.resolve(), job1.resolve(),
                                      job2.resolve()])


async def test_local_persist_of_a_vanished_folder_fails(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    key = _key()
    await store.put_bytes(key, b"abc")
    await store.persist([key])
    assert await store.delete(key)  # its emptied folders go too
    with pytest.raises(FileNotFoundError):
        await store.persist([key])
