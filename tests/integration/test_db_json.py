"""json and jsonb values read through genq's pool are what ``json.loads`` makes of the text
PostgreSQL sends, whatever their shape or spacing."""

from __future__ import annotations

import json

import pytest

from shared.db import Pool, decode_json

DOCUMENTS = [
    '{"thumb": {"width": 256, "height": 256, "mime_type": "image/webp", "storage_key": "k"}}',
    '{}', '[]', 'null', 'true', '0', '-12.5e3', '123456789012345678901234567890',
    '"caf\\u00e9 \\"quoted\\" \\\\ \\n"', '[1, [2, [3, {"a": [null, false]}]]]',
    '{"b": 1, "a": 2, "b": 3}', '"\U0001f600 emoji"',
]


@pytest.mark.parametrize("text", DOCUMENTS)
async def test_jsonb_and_json_values_decode_as_json_loads(pool: Pool, text: str) -> None:
    as_jsonb = await pool.fetchval("SELECT $1::text::jsonb", text)
    jsonb_text = await pool.fetchval("SELECT $1::text::jsonb::text", text)
    assert as_jsonb == json.loads(jsonb_text)
    # json keeps the text as it was written, spacing included.
    spaced = f"  {text}\n "
    assert await pool.fetchval("SELECT $1::text::json", spaced) == json.loads(spaced)


def test_decode_json_matches_json_loads_and_refuses_what_it_refuses() -> None:
    for text in (*DOCUMENTS, " [1] ", "\t{}\n", "[1,2]  "):
        assert decode_json(text) == json.loads(text), text
    for bad in ("", "{", "[1] x", "nope", "{} {}"):
        with pytest.raises(json.JSONDecodeError):
            decode_json(bad)
