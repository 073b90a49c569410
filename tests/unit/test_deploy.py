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
                             "worker", "scheduler", "prometheus"}
    declared = set(compose["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"
    assert {"pgdata", "redisdata", "miniodata", "promdata"} <= declared


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


def test_prometheus_scrapes_every_genq_process(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    config_file = compose["configs"][prometheus["configs"][0]["source"]]["file"]
    assert prometheus["configs"][0]["target"] == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / config_file).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {}
    for job in jobs.values():
        (sd,) = job["dns_sd_configs"]
        (name,) = sd["names"]
        targets[name] = (sd["port"], job)
    assert set(targets) == {"api", "worker", "scheduler"}
    # Every replica is found by its service name (so --scale works), at the port it serves.
    assert targets["api"][0] == int(services["api"]["command"][-1])
    for name in ("worker", "scheduler"):
        env = services[name]["environment"]
        assert env["GENQ_METRICS_HOST"] == "0.0.0.0"
        assert targets[name][0] == int(env["GENQ_METRICS_PORT"])
        assert "authorization" not in targets[name][1]
    # The API's /metrics takes the admin token, handed to Prometheus as a Compose secret.
    api_auth = targets["api"][1]["authorization"]
    (secret,) = prometheus["secrets"]
    assert api_auth["credentials_file"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret] == {"environment": "GENQ_ADMIN_TOKEN"}
    for mount in prometheus["volumes"]:
        assert mount.split(":")[0] in compose["volumes"]


def test_the_grafana_dashboard_shows_only_series_genq_exports() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from shared.metrics import Metrics

    metrics = Metrics()
    # Every family, with a sample per label set so histograms show their _bucket/_count/_sum.
    for metric in metrics.registry.collect():
        assert metric.name.startswith("genq_")
    exported: set[str] = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        exported.add(family.name)
        exported |= {f"{family.name}{suffix}" for suffix in
                     ("_total", "_bucket", "_count", "_sum", "_created")}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    assert len(queries) >= 10
    used = {name for expr in queries for name in re.findall(r"\b(genq_[a-z_]+)", expr)}
    assert used and used <= exported, used - exported
    # Every series genq exports is on the dashboard.
    families = {m.name for m in metrics.registry.collect()}
    assert {name for name in families
            if not any(u.startswith(name) for u in used)} == set()
