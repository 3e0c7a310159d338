"""The docker/ files are for users' deployments: no engine runs here, so check their syntax and
that no secret has a default; and the local set-up's own secrets (warehouse.env)."""

from __future__ import annotations

import os
import re
import stat

import yaml

from warehouse import env, settings

DOCKER = settings.PROJECT_ROOT / "docker"
INSTRUCTIONS = {
    "FROM",
    "ENV",
    "RUN",
    "WORKDIR",
    "COPY",
    "USER",
    "CMD",
    "ARG",
    "EXPOSE",
    "ENTRYPOINT",
    "LABEL",
}
# Every secret (and required setting) of the deployment, and services that must share it.
SECRETS = {
    "POSTGRES_PASSWORD": {"postgres", "migrate", "airflow-scheduler", "collector", "mlflow"},
    "UNSUBSCRIBE_SECRET": {"collector", "airflow-scheduler", "airflow-triggerer", "airflow-api-server"},
    "AIRFLOW__API_AUTH__JWT_SECRET": {
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    },
    "AIRFLOW__CORE__FERNET_KEY": {
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    },
    "COLLECTOR_WRITE_KEYS": {"collector"},
    "COLLECTOR_WEBHOOK_SECRETS": {"collector"},
    "CAMPAIGNS_PUBLIC_URL": {"airflow-scheduler"},
    "SHOP_DATABASE_URL": {"airflow-scheduler"},
}
OPTIONAL = {"COLLECTOR_SHOPIFY_SECRETS"}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


def compose_text() -> str:
    return (DOCKER / "compose.yaml").read_text()


def test_compose_file_is_valid_yaml_with_services_built_from_the_dockerfile():
    compose = yaml.safe_load(compose_text())
    services = compose["services"]
    assert {"postgres", "airflow-scheduler", "airflow-triggerer", "collector", "mlflow"} <= set(services)
    for name, service in services.items():
        assert "image" in service, f"service {name} has no image"
        if "build" in service:
            assert (settings.PROJECT_ROOT / service["build"]["dockerfile"]).exists()


def test_every_variable_of_the_compose_file_fails_fast_when_missing():
    used = {}
    lines = [line for line in compose_text().splitlines() if not line.lstrip().startswith("#")]
    for match in INTERPOLATION.finditer("\n".join(lines)):
        name, operator, message = match.groups()
        used.setdefault(name, set()).add(operator)
        if name not in OPTIONAL:
            assert operator == ":?" and message.strip(), f"${{{name}}} has a default or no error message"
    assert set(SECRETS) | OPTIONAL == set(used)


def test_services_get_the_secrets_they_share_and_run_outside_development_mode():
    services = yaml.safe_load(compose_text())["services"]
    for secret, needing in SECRETS.items():
        for name in needing:
            assert secret in str(services[name]), f"{name} lacks {secret}"
    for name, service in services.items():
        if name != "postgres":
            assert service.get("environment", {}).get("EMAILP_ENV", "production") != settings.DEVELOPMENT
    assert services["collector"]["environment"]["EMAILP_ENV"] == "production"


def test_mlflow_is_published_on_loopback_only():
    mlflow = yaml.safe_load(compose_text())["services"]["mlflow"]
    assert all(str(port).startswith("127.0.0.1:") for port in mlflow["ports"]), mlflow["ports"]


def test_the_environment_example_lists_every_secret():
    names = {
        line.split("=", 1)[0]
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert names == set(SECRETS) | OPTIONAL


def test_dockerfile_uses_known_instructions_and_the_lock():
    lines = []
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw)
    starts = [line.split()[0] for line in lines if not line.startswith((" ", "\t"))]
    assert starts[0] == "FROM"
    assert set(starts) <= INSTRUCTIONS, set(starts) - INSTRUCTIONS
    assert any("requirements.lock" in line for line in lines)
    assert not any("EMAILP_ENV" in line for line in lines)  # the image is never in development mode


def test_the_local_set_up_shares_generated_secrets_and_prints_none(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "LOCAL_DIR", tmp_path)
    exports = env.shell_exports()
    files = env.local_secret_files()
    assert set(files) == set(env.LOCAL_SECRETS)
    for variable, path in files.items():
        value = path.read_text()
        assert len(value) >= 32 and value not in exports  # read from the file by the shell, not printed
        assert f"export {variable}=" in exports
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env.local_secret_files() == files and all(files[v].read_text() for v in files)  # generated once
    assert 'export EMAILP_ENV="${EMAILP_ENV:-development}"' in exports


def test_apply_defaults_sets_the_local_secrets_only_in_development_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "LOCAL_DIR", tmp_path)
    for variable in env.LOCAL_SECRETS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("EMAILP_ENV", "production")
    env.apply_defaults()
    assert not any(variable in os.environ for variable in env.LOCAL_SECRETS)
    monkeypatch.setenv("EMAILP_ENV", "development")
    env.apply_defaults()
    files = env.local_secret_files()
    assert all(os.environ[v] == files[v].read_text() for v in env.LOCAL_SECRETS)
