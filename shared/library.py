"""Saving workspace assets to the permanent library.

A saved item's bytes and variants are copies under keys of their own
(``library/<user>/<short_id>...``), so the workspace expiry, which deletes the asset's files,
never touches them. Each save copies to keys named by its own new short id before the
transaction that records the item; ``genq_library_save`` records one item per user and source
asset, and every save that did not record one deletes its own copies, so concurrent saves of
one asset leave one item and one copy. (A crash between copy and delete leaves files no row
points at; the orphan sweep removes them.)
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from shared.db import Pool
from shared.errors import StorageQuotaExceeded
from shared.logging import get_logger
from shared.storage import ObjectNotFound, Storage
from sql import queries

log = get_logger(__name__)

#: Characters of a share link's id (URL-safe base64 of 8 random bytes).
SHORT_ID_BYTES = 8


def new_short_id() -> str:
    """A random 11-character URL-safe id for share links."""
    return secrets.token_urlsafe(SHORT_ID_BYTES)


def library_key(user_id: uuid.UUID, short_id: str, source_key: str,
                kind: str | None = None) -> str:
    """The permanent key of a saved item's bytes (or of its variant ``kind``), keeping the
    source key's extension."""
    name = source_key.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1] if "." in name else "bin"
    stem = f"{short_id}.{kind}" if kind else short_id
    return f"library/{user_id}/{stem}.{ext}"


#: The keyset position before the feed's first item: asyncpg sends ``datetime.max`` as
#: PostgreSQL's ``infinity``, later than any ``published_at``.
FEED_START = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=0))


def feed_read(kind: str | None, model: str | None,
              after: tuple[datetime, uuid.UUID] | None, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The feed's statement for these filters (each filter has one that seeks its own index)
    and its arguments: ``limit`` items after ``after`` (``(published_at, id)`` of the previous
    page's last; None: from the start)."""
    published_at, last_id = after or FEED_START
    args: tuple[Any, ...] = (published_at, last_id, limit)
    if kind is not None and model is not None:
        return queries["feed_of_type_and_model"], (*args, kind, model)
    if kind is not None:
        return queries["feed_of_type"], (*args, kind)
    if model is not None:
        return queries["feed_of_model"], (*args, model)
    return queries["feed"], args


@dataclass(frozen=True)
class Saved:
    """What a save did: ``created`` (the new item), ``existing`` (the item of an earlier save
    of this asset), ``asset_not_found`` (expired, or another user's) or
    ``collection_not_found``; the last two save nothing and have no item."""

    outcome: Literal["created", "existing", "asset_not_found", "collection_not_found"]
    item_id: uuid.UUID | None = None


async def save_asset(
    pool: Pool,
    storage: Storage,
    user_id: uuid.UUID,
    asset: Mapping[str, Any],
    *,
    title: str | None,
    tags: Sequence[str],
    collection_id: uuid.UUID | None,
    is_favorite: bool,
    visibility: str,
    default_quota_bytes: int,
) -> Saved:
    """Save ``asset`` (a ``get_asset`` row of ``user_id``): copy its bytes and variants, then
    record the item within the user's storage quota (:class:`StorageQuotaExceeded` past it):
    their own, else their plan's, else ``default_quota_bytes`` (``genq_storage_quota``). A save
    that does not create an item leaves no copy behind."""
    asset_id: uuid.UUID = asset["id"]
    short_id = new_short_id()
    key = library_key(user_id, short_id, asset["storage_key"])
    variant_keys = {
        kind: library_key(user_id, short_id, v["storage_key"], kind)
        for kind, v in (asset["variants"] or {}).items()
    }
    try:
        await storage.copy(asset["storage_key"], key)
    except ObjectNotFound as exc:
        # The expiry deleted the file: the asset is gone (or about to be).
        await _discard(storage, [key])
        log.info("library_save_source_gone", asset_id=str(asset_id), error=repr(exc))
        return Saved("asset_not_found")
    kept: dict[str, str] = {}
    for kind, v in (asset["variants"] or {}).items():
        try:
            await storage.copy(v["storage_key"], variant_keys[kind])
        except ObjectNotFound:
            continue  # an item keeps the variants that could be copied
        kept[kind] = variant_keys[kind]
    row = await pool.fetchrow(
        queries["library_save"], user_id, asset_id, short_id, key, kept,
        title, list(tags), collection_id, is_favorite, visibility, default_quota_bytes,
    )
    assert row is not None
    outcome: str = row["outcome"]
    if outcome == "created":
        return Saved("created", row["item_id"])
    await _discard(storage, [key, *variant_keys.values()])
    if outcome == "existing":
        return Saved("existing", row["item_id"])
    if outcome == "quota":
        raise StorageQuotaExceeded(
            "saving this asset would take your library past its storage quota",
            details={"size_bytes": asset["file_size_bytes"]},
        )
    if outcome == "no_collection":
        return Saved("collection_not_found")
    return Saved("asset_not_found")


async def _discard(storage: Storage, keys: Sequence[str]) -> None:
    """Delete this save's own copies (no row points at them)."""
    for key in keys:
        await storage.delete(key)
