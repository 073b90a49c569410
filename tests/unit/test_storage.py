from __future__ import annotations

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


def test_storage_url_chooses_the_backend(tmp_path: Path) -> None:
    default = open_storage(load_settings(data_dir=tmp_path))
    assert isinstance(default, LocalStorage) and default.root == (tmp_path / "storage").resolve()
    folder = open_storage(load_settings(storage_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(folder, LocalStorage) and folder.root == (tmp_path / "elsewhere").resolve()
    s3 = open_storage(load_settings(storage_url="s3://media/genq/assets",
                                    s3_endpoint_url="http://127.0.0.1:9000", s3_region="auto"))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("media", "genq/assets")
