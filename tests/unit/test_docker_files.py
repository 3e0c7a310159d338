"""The docker/ files are for users' deployments: no engine runs here, so check their syntax."""

from __future__ import annotations

import yaml

from warehouse import settings

DOCKER = settings.PROJECT_ROOT / "docker"
INSTRUCTIONS = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "CMD", "ARG", "EXPOSE", "ENTRYPOINT", "LABEL"}


def test_compose_file_is_valid_yaml_with_services_built_from_the_dockerfile():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "airflow-scheduler", "airflow-triggerer", "collector", "mlflow"} <= set(services)
    for name, service in services.items():
        assert "image" in service, f"service {name} has no image"
        if "build" in service:
            assert (settings.PROJECT_ROOT / service["build"]["dockerfile"]).exists()


def test_dockerfile_uses_known_instructions_and_the_lock():
    lines = []
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw)
    starts = [line.split()[0] for line in lines if not line.startswith((" ", "\t"))]
    assert starts[0] == "FROM"
    assert set(starts) <= INSTRUCTIONS, set(starts) - INSTRUCTIONS
    assert any("requirements.lock" in line for line in lines)
