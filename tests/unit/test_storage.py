from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.storage import LocalStorage, StorageKeyError, asset_key


def test_atomic_write_read_delete(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    key = asset_key(uuid.uuid4(), uuid.uuid4(), 0, "png")
    assert store.write_bytes(key, b"abc") == 3
    assert store.exists(key)
    with store.open(key) as f:
        assert f.read() == b"abc"
    assert store.delete(key) is True
    assert store.delete(key) is False
    assert list(tmp_path.rglob("*")) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    key = asset_key(uuid.uuid4(), uuid.uuid4(), 1, "png")
    with pytest.raises(RuntimeError), store.writer(key) as f:
        f.write(b"half")
        raise RuntimeError("download failed")
    assert not store.exists(key)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", ""])
def test_keys_cannot_escape_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageKeyError):
        LocalStorage(tmp_path).path(key)
