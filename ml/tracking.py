"""MLflow wiring: the tracking store from settings, experiments with explicit artifact locations.

The store is the embedded PostgreSQL's `mlflow` database (MLFLOW_TRACKING_URI
overrides it; tests use a throwaway sqlite file). Artifacts go to a directory
under `.local/`, set per experiment when it is created, so they never land in
the current working directory of whoever ran the job.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from functools import cache

from ml import config
from warehouse import settings

log = logging.getLogger(__name__)

# Pinned requirements for logged models: without them MLflow spends ~8 s
# inferring them per log_model call.
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "scikit-learn==1.9.1",
    "pandas==3.1.1",
    "numpy==2.4.6",
    "lifetimes==0.11.3",
]


def setup() -> str:
    """Point MLflow at the configured store; return the tracking URI."""
    # skops (MLflow's model format) finds a type's module by reading the type's name
    # off every module in sys.modules, once for all of scipy's ufuncs when it is
    # first imported. In an Airflow task each of Airflow's deprecated shim modules
    # answers with a FutureWarning: 1,160 lines in the task log (and in `make
    # demo`) per ML task. The filter is in place before skops is imported.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")
    import mlflow
    import skops.io  # noqa: F401 - imported here, under the filter

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    uri = settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment(stage: str) -> str:
    """Create (once) and activate the experiment of a stage; return its id."""
    import mlflow

    setup()
    experiment_id = _experiment_id(settings.mlflow_tracking_uri(), config.experiment_name(stage))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@cache
def _experiment_id(uri: str, name: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        location = config.artifact_root() / name.replace("/", "_")
        location.mkdir(parents=True, exist_ok=True)
        try:
            experiment_id = client.create_experiment(name, artifact_location=location.as_uri())
        except Exception:  # created concurrently by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
    return experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
