"""The real Airflow services on 127.0.0.1, as background processes.

    python -m orchestration.airflow_services start [--only scheduler,triggerer,...]
    python -m orchestration.airflow_services status
    python -m orchestration.airflow_services stop

Starts `airflow api-server` (127.0.0.1, AIRFLOW__API__PORT), `scheduler`,
`dag-processor` and `triggerer`, each in its own session with its PID in
`.local/airflow-services/<name>.pid` and its output in `<name>.log`, and waits
until the api-server's health endpoint reports every component healthy. `stop`
ends exactly the process groups it started (SIGTERM, then SIGKILL after a
grace period), checking each PID still runs an airflow command first.

The trigger benchmark uses `AirflowServices(state_dir=..., env=...)` to run a
separate set against its own databases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from warehouse import env as warehouse_env
from warehouse import settings

SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


def _airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


class AirflowServices:
    def __init__(self, state_dir: Path | None = None, env: dict[str, str] | None = None, services=SERVICES):
        self.state_dir = Path(state_dir or settings.LOCAL_DIR / "airflow-services")
        base = dict(os.environ)
        for key, value in warehouse_env.defaults().items():
            base.setdefault(key, value)
        base.update(env or {})
        self.env = base
        self.services = tuple(services)

    @property
    def port(self) -> int:
        return int(self.env.get("AIRFLOW__API__PORT", "8080"))

    def command(self, name: str) -> list[str]:
        if name == "api-server":
            return [
                _airflow_bin(),
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ]
        return [_airflow_bin(), name]

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        path = self._pidfile(name)
        if not path.exists():
            return None
        pid = int(path.read_text().strip())
        return pid if _is_ours(pid) else None

    def start(self, *, wait: bool = True, timeout: float = 120.0) -> dict[str, int]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{self.port}/execution/")
        self.env = env
        started = {}
        for name in self.services:
            if self.pid(name):
                started[name] = self.pid(name)
                continue
            log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen(
                self.command(name),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends it and its workers
                cwd=settings.PROJECT_ROOT,
            )
            log.close()
            self._pidfile(name).write_text(str(proc.pid))
            started[name] = proc.pid
        if wait:
            self.wait_healthy(timeout)
        return started

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=2
            ) as r:
                return json.loads(r.read())
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def wait_healthy(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for name in self.services:
                if self.pid(name) is None:
                    raise RuntimeError(f"airflow {name} exited; see {self.state_dir / (name + '.log')}")
            last = self.health()
            if last and "api-server" in self.services:
                wanted = [HEALTH_KEYS[n] for n in self.services if n in HEALTH_KEYS]
                if all((last.get(k) or {}).get("status") == "healthy" for k in wanted + ["metadatabase"]):
                    return last
            elif "api-server" not in self.services:
                return {}
            time.sleep(0.5)
        raise TimeoutError(f"Airflow services not healthy after {timeout:.0f}s: {last}")

    def stop(self, timeout: float = 30.0) -> list[str]:
        stopped = []
        groups = {}
        for name in reversed(self.services):
            path = self._pidfile(name)
            if not path.exists():
                continue
            pgid = int(path.read_text().strip())
            if _safe_to_signal(pgid):
                _signal_group(pgid, signal.SIGTERM)
                groups[name] = pgid
                stopped.append(name)
        deadline = time.monotonic() + timeout
        for pgid in groups.values():
            while _group_alive(pgid) and time.monotonic() < deadline:
                _reap(pgid)
                time.sleep(0.2)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
            _reap(pgid)
        for name in self.services:
            self._pidfile(name).unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in self.services}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _is_ours(pid: int) -> bool:
    """The PID still runs an airflow command (not a recycled PID)."""
    if not _alive(pid):
        return False
    try:
        return b"airflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # only zombies left (our own unreaped children) count as gone
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _safe_to_signal(pgid: int) -> bool:
    """The group we started: its leader still runs airflow, or is our unreaped zombie,
    or is gone while members remain (a PID cannot be reused while its group exists)."""
    try:
        state = Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return _group_alive(pgid)
    if state[0] == "Z" or int(state[2]) != pgid:
        return state[0] == "Z"
    return _is_ours(pgid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group we created with start_new_session (pgid == pid)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="start/stop/status of the Airflow services")
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--only", default=",".join(SERVICES), help="comma-separated subset")
    args = parser.parse_args(argv)
    services = AirflowServices(services=[s for s in args.only.split(",") if s])
    if args.command == "start":
        pids = services.start()
        print(f"Airflow services running on 127.0.0.1:{services.port}: {pids}")
    elif args.command == "stop":
        print(f"stopped: {', '.join(services.stop()) or 'nothing was running'}")
    else:
        status = services.status()
        print(json.dumps(status))
        return 0 if all(status.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
