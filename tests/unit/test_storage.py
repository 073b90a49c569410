from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest

from shared.settings import load_settings
from shared.storage import LocalStorage, StorageKeyError, asset_key, open_storage
from shared.storage.s3 import S3Storage


def test_sync_write_and_delete(tmp_path: Path) -> None:
    """The blocking calls other modules use from a thread (media variants)."""
    store = LocalStorage(tmp_path)
    key = asset_key(uuid.uuid4(), uuid.uuid4(), 0, "png")
    assert store.write_bytes(key, b"abc") == 3
    assert store.path(key).read_bytes() == b"abc"
    assert store.delete_sync(key) is True
    assert store.delete_sync(key) is False
    assert list(tmp_path.rglob("*")) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    key = asset_key(uuid.uuid4(), uuid.uuid4(), 1, "png")
    with pytest.raises(RuntimeError), store.writer(key) as f:
        f.write(b"half")
        raise RuntimeError("download failed")
    assert not store.path(key).exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "", "a/./b", "a\\b"])
def test_keys_cannot_escape_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageKeyError):
        LocalStorage(tmp_path).path(key)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_written_0600_in_0700_folders(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    user, job = uuid.uuid4(), uuid.uuid4()
    key = asset_key(user, job, 0, "png")
    LocalStorage(root).write_bytes(key, b"\x89PNG")
    assert _mode(root / key) == 0o600
    assert _mode(root / str(user) / str(job)) == 0o700
    assert _mode(root / str(user)) == 0o700
    assert _mode(root) == 0o700


def test_a_root_left_open_by_an_older_version_is_closed_at_the_first_write(
    tmp_path: Path,
) -> None:
    root = tmp_path / "storage"
    old = root / "someone" / "some-job" / "0.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    for path in (root, old.parent.parent, old.parent):
        path.chmod(0o755)
    LocalStorage(root).write_bytes(asset_key(uuid.uuid4(), uuid.uuid4(), 0, "png"), b"new")
    assert _mode(root) == 0o700


def test_storage_url_chooses_the_backend(tmp_path: Path) -> None:
    default = open_storage(load_settings(data_dir=tmp_path))
    assert isinstance(default, LocalStorage) and default.root == (tmp_path / "storage").resolve()
    folder = open_storage(load_settings(storage_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(folder, LocalStorage) and folder.root == (tmp_path / "elsewhere").resolve()
    s3 = open_storage(load_settings(storage_url="s3://media/genq/assets",
                                    s3_endpoint_url="http://127.0.0.1:9000", s3_region="auto"))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("media", "genq/assets")
