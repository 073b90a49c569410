from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import SEVEN_DAYS_S, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GENQ_DATABASE_URL", "GENQ_REDIS_URL", "GENQ_WORKSPACE_TTL_S"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings(_env_file=None)
    assert s.database_url is None and s.redis_url is None
    assert s.workspace_ttl_s == SEVEN_DAYS_S
    assert s.output_max_bytes == 1024**3
    assert s.storage_root == Path(".genq") / "storage"


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENQ_WORKSPACE_TTL_S", "60")
    monkeypatch.setenv("GENQ_OUTPUT_ALLOWED_HOSTS", "127.0.0.1, Files.Internal ,")
    monkeypatch.setenv("GENQ_DATABASE_URL", "postgresql://u@h/db")
    s = load_settings(_env_file=None)
    assert s.workspace_ttl_s == 60
    assert s.output_allowed_hosts == ["127.0.0.1", "files.internal"]
    assert s.database_url == "postgresql://u@h/db"


def test_blank_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENQ_REDIS_URL", "  ")
    assert load_settings(_env_file=None).redis_url is None


def test_reads_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENQ_MAX_JOBS", raising=False)
    env = tmp_path / ".env"
    env.write_text("GENQ_MAX_JOBS=7\n")
    assert load_settings(_env_file=env).max_jobs == 7


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GENQ_WORKSPACE_TTL_S", "soon"),
        ("GENQ_WORKSPACE_TTL_S", "0"),
        ("GENQ_DATABASE_URL", "mysql://x"),
        ("GENQ_REDIS_URL", "http://x"),
        ("GENQ_LOG_FORMAT", "xml"),
        ("GENQ_LOCAL_FAILURE_RATE", "2"),
        ("GENQ_SWEEP_INTERVAL_S", "7"),
        ("GENQ_SWEEP_INTERVAL_S", "90"),
        ("GENQ_ENQUEUE_SWEEP_INTERVAL_S", "7"),
        ("GENQ_ENQUEUE_SWEEP_INTERVAL_S", "0"),
        ("GENQ_OUTPUT_ALLOWED_TYPES", "image/png,image/heic"),
        ("GENQ_OUTPUT_ALLOWED_TYPES", "application/pdf"),
        ("GENQ_MEDIA_MAX_PIXELS", "0"),
        ("GENQ_MEDIA_THREADS", "0"),
        ("GENQ_STORAGE_URL", "/var/genq"),
        ("GENQ_STORAGE_URL", "s3:///no-bucket"),
        ("GENQ_STORAGE_URL", "gs://bucket"),
        ("GENQ_S3_ENDPOINT_URL", "minio:9000"),
        ("GENQ_URL_SIGNING_KEY", "too-short"),
        ("GENQ_URL_TTL_S", "0"),
        ("GENQ_PUBLIC_BASE_URL", "cdn.example.com"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert var in info.value.message


@pytest.mark.parametrize("token", ["change-me", "x" * 31])
def test_a_short_admin_token_is_refused_with_how_to_make_one(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(admin_token=token, _env_file=None)
    assert "GENQ_ADMIN_TOKEN" in caught.value.message
    assert "at least 32 characters" in caught.value.message
    assert "secrets.token_urlsafe(32)" in caught.value.message
    assert token not in caught.value.message


def test_an_admin_token_of_32_characters_is_accepted_and_a_blank_one_is_unset() -> None:
    token = load_settings(admin_token="x" * 32, _env_file=None).admin_token
    assert token is not None and token.get_secret_value() == "x" * 32
    assert load_settings(admin_token="  ", _env_file=None).admin_token is None


def test_output_allowed_types(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(_env_file=None).output_allowed_types == [
        "image/jpeg", "image/png", "image/webp", "image/gif", "image/avif", "video/mp4",
        "video/webm"]
    monkeypatch.setenv("GENQ_OUTPUT_ALLOWED_TYPES", " Image/PNG, video/quicktime ,")
    assert load_settings(_env_file=None).output_allowed_types == [
        "image/png", "video/quicktime"]
def test_storage_and_cors_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENQ_STORAGE_URL", "s3://media/genq")
    monkeypatch.setenv("GENQ_S3_ENDPOINT_URL", "https://r2.example.com/")
    monkeypatch.setenv("GENQ_CORS_ORIGINS", "https://app.example.com/, http://localhost:5173")
    s = load_settings(_env_file=None)
    assert (s.storage_url, s.s3_endpoint_url) == ("s3://media/genq", "https://r2.example.com")
    assert s.cors_origins == ["https://app.example.com", "http://localhost:5173"]
    assert s.url_ttl_s == 3600


@pytest.mark.parametrize("source", [{"jwt_secret": "s" * 32},
                                    {"jwt_jwks_url": "https://idp.example.com/jwks.json"}])
@pytest.mark.parametrize("claims", [{}, {"jwt_issuer": "https://idp.example.com/"},
                                    {"jwt_audience": "genq"}])
def test_jwt_sign_in_needs_an_issuer_and_an_audience(
    source: dict[str, str], claims: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**source, **claims, _env_file=None)
    assert caught.value.message == (
        "invalid settings: GENQ_JWT_ISSUER and GENQ_JWT_AUDIENCE are required when "
        "GENQ_JWT_JWKS_URL or GENQ_JWT_SECRET is set")


def test_jwt_settings() -> None:
    assert not load_settings(jwt_secret=" ", jwt_jwks_url="", _env_file=None).jwt_enabled
    on = load_settings(jwt_jwks_url="https://idp.example.com/jwks.json",
                       jwt_issuer="https://idp.example.com/", jwt_audience="genq",
                       _env_file=None)
    assert on.jwt_enabled and on.jwt_secret is None and on.new_user_credits == 0
    for bad, var in (({"jwt_secret": "short"}, "GENQ_JWT_SECRET"),
                     ({"jwt_jwks_url": "idp.example.com/jwks"}, "GENQ_JWT_JWKS_URL"),
                     ({"new_user_credits": -1}, "GENQ_NEW_USER_CREDITS")):
        with pytest.raises(ConfigError) as caught:
            load_settings(**bad, jwt_issuer="i", jwt_audience="a", _env_file=None)
        assert var in caught.value.message
        assert "short" not in caught.value.message


def test_named_admin_tokens_are_read_beside_the_single_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENQ_ADMIN_TOKENS", f" ops:{'o' * 32}, billing.bot:{'b' * 40} ,")
    s = load_settings(admin_token="a" * 32, _env_file=None)
    assert [(name, token.get_secret_value()) for name, token in s.admins] == [
        ("admin", "a" * 32), ("ops", "o" * 32), ("billing.bot", "b" * 40)]
    alone = load_settings(admin_token=None, _env_file=None)
    assert [name for name, _ in alone.admins] == ["ops", "billing.bot"]


@pytest.mark.parametrize(("value", "message"), [
    (f"ops:{'o' * 31}", "at least 32 characters"),
    (f"ops{'o' * 32}", "name:token"),
    (f"o p:{'o' * 32}", "name:token"),
    (f"ops:{'o' * 32},ops:{'p' * 32}", "given twice"),
    (f"ops:{'o' * 32},bob:{'o' * 32}", "the same token"),
    (f"admin:{'o' * 32}", "choose another"),
])
def test_bad_named_admin_tokens_are_refused(monkeypatch: pytest.MonkeyPatch, value: str,
                                            message: str) -> None:
    monkeypatch.setenv("GENQ_ADMIN_TOKENS", value)
    with pytest.raises(ConfigError, match=r"GENQ_ADMIN_TOKENS|admins") as caught:
        load_settings(admin_token="a" * 32, _env_file=None)
    assert message in str(caught.value)
    assert "o" * 31 not in str(caught.value)
