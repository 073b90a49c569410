from __future__ import annotations

from pathlib import Path

import pytest

from shared.catalog import load_catalog
from shared.errors import ConfigError


def test_builtin_catalog_has_local_models() -> None:
    keys = {m.key: m for m in load_catalog(None)}
    assert {"local/sketch", "local/poster"} <= set(keys)
    assert all(m.provider == "local" for m in keys.values())


def test_operator_file_overrides_and_adds(tmp_path: Path) -> None:
    f = tmp_path / "models.toml"
    f.write_text(
        '[[models]]\nkey = "local/sketch"\nprovider = "local"\nref = "sketch"\n'
        'media_type = "image"\nprice_per_output = 9\nmax_outputs = 2\ntimeout_s = 5\n'
        '[[models]]\nkey = "replicate/flux-schnell"\nprovider = "replicate"\n'
        'ref = "black-forest-labs/flux-schnell"\nmedia_type = "image"\nprice_per_output = 3\n'
        'max_outputs = 4\ntimeout_s = 120\nparams = { aspect_ratio = "1:1" }\n'
    )
    keys = {m.key: m for m in load_catalog(f)}
    assert keys["local/sketch"].price_per_output == 9
    assert keys["replicate/flux-schnell"].params == {"aspect_ratio": "1:1"}


@pytest.mark.parametrize(
    "body",
    [
        "not toml = = =",
        '[[models]]\nkey = "x"\n',
        '[[models]]\nkey = "a/b"\nprovider = "local"\nref = "r"\nmedia_type = "audio"\n'
        "price_per_output = 1\nmax_outputs = 1\ntimeout_s = 1\n",
        '[[models]]\nkey = "a/b"\nprovider = "local"\nref = "r"\nmedia_type = "image"\n'
        "price_per_output = -1\nmax_outputs = 1\ntimeout_s = 1\n",
        '[[models]]\nkey = "a/b"\nprovider = "local"\nref = "r"\nmedia_type = "image"\n'
        "price_per_output = 1\nmax_outputs = 1\ntimeout_s = 1\nsurprise = 1\n",
    ],
)
def test_bad_catalog_files_are_config_errors(tmp_path: Path, body: str) -> None:
    f = tmp_path / "models.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=str(f)):
        load_catalog(f)


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GENQ_MODELS_FILE"):
        load_catalog(tmp_path / "absent.toml")
