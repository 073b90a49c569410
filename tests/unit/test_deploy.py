"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose specification (the ``compose-spec`` parser,
after resolving YAML anchors as Compose does), then checked for what genq needs: every command is
a real ``genq`` command line, every ``GENQ_*`` variable is a real setting, the worker can be scaled,
the migration runs once before the services that need it, and data lives on volumes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import compose_spec
import pytest
import yaml

from genq.cli import build_parser
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    resolved = {k: v for k, v in raw.items() if not k.startswith("x-")}
    # Raises on unknown keys, wrong types and invalid enum values.
    compose_spec.PyCompose.from_json(json.dumps(resolved)).validate()
    return resolved


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "minio", "minio-init", "migrate", "api",
                             "worker", "scheduler"}
    declared = set(compose["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"
    assert {"pgdata", "redisdata", "miniodata"} <= declared


def test_every_command_is_a_real_genq_command(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name in ("migrate", "api", "worker", "scheduler"):
        command = compose["services"][name]["command"]
        args = parser.parse_args(command)
        assert args.command == command[0]


def test_every_genq_variable_is_a_setting(compose: dict[str, Any]) -> None:
    fields = {f"GENQ_{name.upper()}" for name in Settings.model_fields}
    for name, svc in compose["services"].items():
        for var in svc.get("environment", {}):
            if var.startswith("GENQ_"):
                assert var in fields, f"{name}: {var} is not a genq setting"


def test_health_checks_and_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "scheduler"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio"]["healthcheck"]["test"]
    assert services["minio-init"]["restart"] == "no"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_worker_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # A fixed container name or host port would make `--scale worker=N` fail.
    assert "container_name" not in worker
    assert "ports" not in worker
    # Workers share no disk with the API: outputs go to the bucket both use.
    assert "volumes" not in worker


def test_services_store_assets_in_the_minio_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = " ".join(services["minio-init"]["command"])
    bucket_made = re.search(r"mc mb --ignore-existing genq/(\S+)", init)
    assert bucket_made is not None
    for name in ("migrate", "api", "worker", "scheduler"):
        env = services[name]["environment"]
        assert env["GENQ_STORAGE_URL"].startswith(f"s3://{bucket_made.group(1)}/")
        assert env["GENQ_S3_ENDPOINT_URL"] == "http://minio:9000"
        # genq's S3 credentials are MinIO's root credentials, whatever .env says.
        assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
        assert (env["AWS_SECRET_ACCESS_KEY"]
                == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"])


def test_services_reach_each_other_by_compose_name(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    assert re.search(r"@postgres:5432/", env["GENQ_DATABASE_URL"])
    assert env["GENQ_REDIS_URL"].startswith("redis://redis:6379")


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            *sources, _dest = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    packages = re.findall(r"^COPY (\w+) ", text, re.MULTILINE)
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pkg in ("genq", "api", "worker", "shared", "sql"):
        assert pkg in packages
        assert f'"{pkg}"' in pyproject
    assert 'ENTRYPOINT ["genq"]' in text
