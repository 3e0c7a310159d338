"""The real-time path as services: SMTP sink, collector, and Airflow running only trigger_campaigns.

Shared by the trigger benchmark (`bench/triggers.py`, in throwaway databases)
and the demo's live stage (`demo.py`, on the demo warehouse). Everything listens
on 127.0.0.1; the Airflow services get a private DAGs folder holding only
`dags/trigger_campaigns.py`, so no other DAG is scheduled while they run, and
their own state directory, so `make airflow` services are never touched.
`stop()` ends what `start()` began.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from warehouse import settings

WRITE_KEY = "dev-web-write-key"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    from harness.smtp_sink import free_port as _free

    return _free()


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


class AcceptedIndex:
    """The SMTP sink's index.jsonl (Message-ID -> time accepted), read incrementally:
    re-parsing the whole file four times a second would take CPU from the run it
    measures."""

    def __init__(self, outbox: Path):
        self.path = outbox / "index.jsonl"
        self.offset = 0
        self.times: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.splitlines():
                m = json.loads(line)
                self.times[m["message_id"]] = m["accepted_at"]
        return self.times


class LiveServices:
    """SMTP sink and collector processes plus the Airflow api-server, scheduler,
    dag-processor and triggerer with only the trigger_campaigns DAG."""

    def __init__(
        self,
        *,
        directory: Path,
        warehouse_url: str,
        airflow_url: str,
        smtp_port: int,
        collector_port: int,
        api_port: int,
        extra_env: dict[str, str] | None = None,
        log=print,
    ) -> None:
        self.dir = Path(directory)
        self.outbox = self.dir / "outbox"
        self.warehouse_url = warehouse_url
        self.airflow_url = airflow_url  # postgresql://... (the metadata database)
        self.smtp_port, self.collector_port, self.api_port = smtp_port, collector_port, api_port
        self.extra_env = dict(extra_env or {})
        self.log = log
        self.procs: list[subprocess.Popen] = []
        self.services = None
        self._accepted = AcceptedIndex(self.outbox)

    def env(self) -> dict[str, str]:
        return {
            "WAREHOUSE_URL": self.warehouse_url,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_url.replace(
                "postgresql://", "postgresql+psycopg2://", 1
            ),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dir / "dags"),
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW_CONN_SMTP_CAMPAIGNS": f"smtp://127.0.0.1:{self.smtp_port}",
            "SMTP_SINK_DIR": str(self.outbox),
            "SMTP_SINK_PORT": str(self.smtp_port),
            "COLLECTOR_PORT": str(self.collector_port),
            "COLLECTOR_LOG_LEVEL": "WARNING",
            "CAMPAIGNS_PUBLIC_URL": f"http://127.0.0.1:{self.collector_port}",
            **self.extra_env,
        }

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collector_port}"

    @property
    def shop_webhook_secret(self) -> str:
        """The secret the collector verifies the `shop` source's webhooks with."""
        from collector.config import Settings

        return Settings.from_env(dict(os.environ, **self.env())).webhook_secrets["shop"][0]

    def migrate_airflow(self) -> None:
        """`airflow db migrate` on the metadata database (idempotent)."""
        env = dict(os.environ, **self.env())
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 180) -> None:
        from orchestration.airflow_services import AirflowServices

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "dags").mkdir(exist_ok=True)
        shutil.copy(
            settings.PROJECT_ROOT / "dags" / "trigger_campaigns.py",
            self.dir / "dags" / "trigger_campaigns.py",
        )
        env = dict(os.environ, **self.env())
        self._spawn(
            [
                sys.executable,
                "-m",
                "harness.smtp_sink",
                "--port",
                str(self.smtp_port),
                "--dir",
                str(self.outbox),
            ],
            env,
            "sink",
        )
        self._spawn([sys.executable, "-m", "collector"], env, "collector")
        wait_http(f"{self.collector_url}/health")
        self.log("starting the Airflow api-server, scheduler, dag-processor and triggerer")
        self.services = AirflowServices(state_dir=self.dir / "airflow-services", env=self.env())
        self.services.start(timeout=timeout)
        self.wait_sensor_deferred(timeout=timeout)

    def _spawn(self, cmd: list[str], env: dict, name: str) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs.append(
            subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        )
        log.close()

    def wait_sensor_deferred(self, timeout: float) -> None:
        """Until trigger_campaigns' sensor waits in the triggerer (the DAG is idle and listening)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.airflow_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "select count(*) from task_instance where dag_id = 'trigger_campaigns'"
                    " and task_id = 'wait_for_due_triggers' and state = 'deferred'"
                ).fetchone()
                if row and row[0]:
                    return
                time.sleep(0.5)
        raise TimeoutError("the trigger_campaigns sensor never deferred; see " + str(self.dir))

    def accepted(self) -> dict[str, float]:
        """Message-ID -> when the sink accepted it (epoch seconds)."""
        return self._accepted.read()

    def wait_accepted(self, count: int, timeout: float) -> dict[str, float]:
        """accepted(), once it holds `count` messages (or after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count and time.monotonic() < deadline:
            time.sleep(0.25)
        return self.accepted()

    def stop(self) -> None:
        if self.services is not None:
            try:
                self.services.stop()
            except Exception as exc:  # noqa: BLE001
                self.log(f"stopping Airflow services: {exc}")
            self.services = None
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
