from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.catalog import Checked, ModelRules, load_catalog
from shared.errors import ConfigError
from shared.plans import load_plans


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


@pytest.mark.parametrize(("load", "setting"), [(load_catalog, "GENQ_MODELS_FILE"),
                                               (load_plans, "GENQ_PLANS_FILE")])
def test_missing_file_names_the_setting(tmp_path: Path, load: Callable[[Path], object],
                                        setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        load(tmp_path / "absent.toml")


ENTRY = ('[[models]]\nkey = "acme/m"\nprovider = "replicate"\nref = "acme/m"\n'
         'media_type = "image"\nprice_per_output = 2\nmax_outputs = 4\ntimeout_s = 60\n')


def _rules(tmp_path: Path, extra: str) -> ModelRules:
    f = tmp_path / "models.toml"
    f.write_text(ENTRY + extra)
    return ModelRules.from_spec({m.key: m for m in load_catalog(f)}["acme/m"])


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ('params_schema = { properties = { steps = { type = "nope" } } }',
         "params_schema is not a valid JSON Schema at properties/steps/type"),
        ('params_schema = { type = "object", minProperties = -1 }',
         "params_schema is not a valid JSON Schema at minProperties"),
        ('params = { steps = 500 }\n'
         'params_schema = { properties = { steps = { type = "integer", maximum = 50 } } }',
         "the default params do not match params_schema: params.steps: must be at most 50"),
        ('params = { steps = 5 }\nparams_schema = { properties = {} }',
         "params.steps: is not an accepted parameter"),
        ('params_schema = { "$ref" = "https://example.com/schema.json" }',
         "$ref 'https://example.com/schema.json' cannot be resolved"),
        ('params_schema = { properties = { lora = { "$ref" = "lora.json" } } }',
         "$ref 'lora.json' cannot be resolved"),
        ('params_schema = { properties = { lora = { "$ref" = "#/$defs/lora" } } }',
         "$ref '#/$defs/lora' points at nothing in the schema"),
        ("price_tiers = [{ above_megapixels = 2, price_per_output = 4 },"
         " { above_megapixels = 1, price_per_output = 3 }]",
         "price_tiers must be in increasing order"),
        ('params = { aspect_ratio = "1:1" }\n'
         "price_tiers = [{ above_megapixels = 1, price_per_output = 3 }]",
         "price_tiers need numeric width and height"),
    ],
)
def test_a_bad_params_schema_or_pricing_names_the_model(
    tmp_path: Path, extra: str, says: str
) -> None:
    f = tmp_path / "models.toml"
    f.write_text(ENTRY + extra + "\n")
    with pytest.raises(ConfigError) as caught:
        load_catalog(f)
    assert f"{f}: models[0] (acme/m)" in str(caught.value)
    assert says in str(caught.value)


def test_builtin_sketch_is_priced_by_size() -> None:
    sketch = ModelRules.from_spec({m.key: m for m in load_catalog(None)}["local/sketch"])
    prices = {
        size: sketch.check({"width": size[0], "height": size[1]})
        for size in [(256, 256), (1, 1), (547, 547), (548, 548), (1024, 1024), (1049, 1049),
                     (1483, 1483), (1484, 1484), (2048, 2048), (2048, 1)]
    }
    assert {size: c.price_per_output for size, c in prices.items()
            if isinstance(c, Checked)} == {
        (256, 256): 1, (1, 1): 1, (547, 547): 1, (548, 548): 2, (1024, 1024): 2,
        (1049, 1049): 4, (1483, 1483): 4, (1484, 1484): 8, (2048, 2048): 8, (2048, 1): 1,
    }
    assert sketch.check({}) == Checked({"width": 256, "height": 256, "format": "png"}, 1)


def test_builtin_sketch_refuses_what_its_schema_does_not_allow() -> None:
    sketch = ModelRules.from_spec({m.key: m for m in load_catalog(None)}["local/sketch"])
    assert sketch.check({"width": 4096, "height": 0, "format": "gif", "steps": 50,
                         "disable_safety_checker": True}) == [
        ("params.disable_safety_checker", "is not an accepted parameter of this model"),
        ("params.steps", "is not an accepted parameter of this model"),
        ("params.format", 'must be one of "png", "webp"'),
        ("params.height", "must be at least 1"),
        ("params.width", "must be at most 2048"),
    ]
    for bad in ["abc", None, 1.5, True, [256], {"w": 1}, 10**40]:
        problems = sketch.check({"width": bad})
        assert isinstance(problems, list)
        assert [f for f, _ in problems] == ["params.width"], (bad, problems)


def test_a_model_without_schema_takes_only_its_defaults(tmp_path: Path) -> None:
    rules = _rules(tmp_path, 'params = { aspect_ratio = "1:1" }\n')
    assert rules.check({}) == Checked({"aspect_ratio": "1:1"}, 2)
    assert rules.check({"aspect_ratio": "1:1"}) == Checked({"aspect_ratio": "1:1"}, 2)
    assert rules.check({"aspect_ratio": "16:9", "megapixels": "1"}) == [
        ("params.megapixels", "is not an accepted parameter of this model"),
        ("params.aspect_ratio", 'must be "1:1"'),
    ]


def test_an_operator_may_allow_unknown_keys(tmp_path: Path) -> None:
    rules = _rules(tmp_path, 'params_schema = { additionalProperties = true, properties = '
                             '{ steps = { type = "integer", maximum = 50 } } }\n')
    assert rules.check({"steps": 4, "anything": [1]}) == Checked({"steps": 4, "anything": [1]}, 2)
    assert rules.check({"steps": 51}) == [("params.steps", "must be at most 50")]


def test_local_references_are_followed(tmp_path: Path) -> None:
    rules = _rules(tmp_path, 'params_schema = { properties = { side = { "$ref" = '
                             '"#/$defs/side" } }, "$defs" = { side = { type = "integer", '
                             'maximum = 64 } } }\n')
    assert rules.check({"side": 64}) == Checked({"side": 64}, 2)
    assert rules.check({"side": 65}) == [("params.side", "must be at most 64")]


def test_required_params_are_named(tmp_path: Path) -> None:
    rules = _rules(tmp_path, 'params_schema = { properties = { image = { type = "string" } } }\n'
                             'params = {}\n')
    assert rules.check({}) == Checked({}, 2)
    f = tmp_path / "required.toml"
    f.write_text(ENTRY + 'params = { image = "x" }\n'
                 'params_schema = { required = ["image", "mask"], properties = '
                 '{ image = { type = "string" }, mask = { type = "string" } } }\n')
    with pytest.raises(ConfigError, match=r"params\.mask: is required"):
        load_catalog(f)
