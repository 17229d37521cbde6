"""Several app processes on this machine behind HAProxy, with a private Redis, on one data folder.

    .venv/bin/python scripts/cluster.py [--processes 2] [--port 8000] [--data-dir DIR] [--pin] [--postgres]

(or scripts/cluster.sh, which installs redis-server and haproxy first). Starts, on loopback: a Redis on a
free port with a random password and nothing saved to disk; N `server.py` processes on free ports, all on
the data folder (a fresh one under /tmp unless --data-dir), each with FACES_LIVE_WORKERS = cores / N (and,
with --pin, its own share of the cores through taskset); then HAProxy on --port with leastconn, health
checks on /api/health, WebSocket tunnels and a cookie that keeps a browser's HTTP requests on one process
(a page's requests stay where its session is). Beside them one job worker (`python -m webapp.jobs`) runs
the batch work the processes queue in that Redis: imports, re-embedding, the start-up purge. With
--postgres, a private PostgreSQL (scripts/private_postgres.py, its folder under /tmp kept after Ctrl-C) is
the store of every process (FACES_DATABASE_URL) instead of SQLite. Logs go to files in a run folder it prints.
Ctrl-C stops everything. The test suite (tests/webapp/test_cluster.py) and bench/cluster.py use `Cluster`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # private_postgres.py beside it, however it is loaded
from private_postgres import MISSING as POSTGRES_MISSING  # noqa: E402
from private_postgres import PrivatePostgres  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0  # a server.py to answer /api/health with 200 (the model loads in about 15 s)
HEALTH_PATH = "/api/health"
STICKY_COOKIE = "faces_node"
STOP_WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_config(port: int, backends: list[int], *, check_every_s: float = 1.0) -> str:
    """HAProxy's configuration: the app processes on these loopback ports behind 127.0.0.1:port.

    leastconn: a new connection goes to the process with the fewest (a live stream is one WebSocket
    connection, so it stays where it started). A process is taken out after 2 failed health checks and
    put back after 2 good ones; its open streams are left alone (a busy process that misses two checks
    keeps its cameras; a dead one has lost them anyway). A connection refused by a dead process is sent
    to another at once (redispatch).
    """
    interval = f"{int(check_every_s * 1000)}ms"
    servers = "\n".join(f"    server app{i} 127.0.0.1:{p} check cookie app{i}" for i, p in enumerate(backends, 1))
    return f"""global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 300s
    timeout tunnel 1h
    timeout http-keep-alive 10s
    timeout check 2s
    option forwardfor
    option redispatch 1
    retries 2

frontend faces
    bind 127.0.0.1:{port}
    default_backend apps

backend apps
    balance leastconn
    option httpchk
    http-check send meth GET uri {HEALTH_PATH}
    http-check expect status 200
    default-server inter {interval} fall 2 rise 2
    cookie {STICKY_COOKIE} insert indirect nocache httponly
{servers}
"""


def core_shares(processes: int, cores: list[int] | None = None) -> list[list[int]]:
    """The cores split into `processes` contiguous shares (a share is reused when there are fewer cores)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if len(cores) < processes:
        return [[cores[i % len(cores)]] for i in range(processes)]
    size = len(cores) // processes
    return [cores[i * size:(i + 1) * size] for i in range(processes)]


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict | None]:
    """(HTTP status, JSON body or None); (0, None) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read())
        except ValueError:
            return error.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class App:
    """One server.py process."""

    port: int
    log: Path
    process: subprocess.Popen
    cores: list[int] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return f"server.py on port {self.port}" if self.port else "the job worker"


@dataclass
class Cluster:
    """Redis, N server.py processes and HAProxy on loopback, started by start() and stopped by stop().

    :param env: extra environment for every server.py (e.g. FACES_ADMIN_PASSWORD, FACES_BACKBONE).
    :param pin: give each process its own share of the cores (taskset).
    :param workers: FACES_LIVE_WORKERS per process (default: its share of the cores, at least 1).
    """

    processes: int = 2
    port: int = 0
    data_dir: Path | None = None
    run_dir: Path | None = None
    env: dict = field(default_factory=dict)
    pin: bool = False
    workers: int | None = None
    apps: list[App] = field(default_factory=list)
    redis: subprocess.Popen | None = None
    redis_port: int = 0
    redis_password: str = field(default_factory=lambda: secrets.token_hex(16))
    haproxy: subprocess.Popen | None = None
    worker: App | None = None  # the job worker (webapp/jobs.py); its `port` is 0
    postgres: bool = False  # a private PostgreSQL as the store instead of SQLite in the data folder
    pg: PrivatePostgres | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    def start(self) -> "Cluster":
        missing = [name for name in ("redis-server", "haproxy") if shutil.which(name) is None]
        if missing:
            raise SystemExit(f"{' and '.join(missing)} not found: run scripts/cluster.sh, or "
                             "apt-get install redis-server haproxy")
        if self.postgres and POSTGRES_MISSING:
            raise SystemExit(POSTGRES_MISSING)
        self.run_dir = Path(self.run_dir or tempfile.mkdtemp(prefix="faces-cluster-"))
        self.data_dir = Path(self.data_dir or self.run_dir / "data")
        self.port = self.port or free_port()
        try:
            self.start_redis()
            if self.postgres:
                self.start_postgres()
            shares = core_shares(self.processes)
            first = self.start_app(shares[0])
            wait_until(lambda: get_json(first.url + HEALTH_PATH)[0] != 0, first, "answer HTTP")  # schema made
            for share in shares[1:]:
                self.start_app(share)
            for app in self.apps:
                wait_until(lambda app=app: get_json(app.url + HEALTH_PATH)[0] == 200, app, "load its model")
            self.start_worker()
            self.start_haproxy()
        except BaseException:
            self.stop()
            raise
        return self

    def start_redis(self, port: int | None = None) -> None:
        """A private Redis: loopback, a password, nothing saved (again on the same port after stop_redis)."""
        self.redis_port = port or self.redis_port or free_port()
        log = open(self.run_dir / "redis.log", "ab")
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--requirepass",
             self.redis_password, "--save", "", "--appendonly", "no", "--dir", str(self.run_dir)],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _port_open(self.redis_port):
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.run_dir / 'redis.log'}")
            time.sleep(0.02)

    def start_postgres(self) -> None:
        """A private PostgreSQL with an empty `faces` database; the first process creates the schema."""
        self.pg = PrivatePostgres().start()
        self.pg.admin("CREATE DATABASE faces")
        self.env = {**self.env, "FACES_DATABASE_URL": self.pg.url("faces")}

    def stop_redis(self) -> None:
        _stop(self.redis)
        self.redis = None

    def app_env(self, cores: list[int] | None) -> dict:
        share = len(cores) if cores else max(1, len(os.sched_getaffinity(0)) // self.processes)
        return dict(os.environ, FACES_PROCESSES=str(self.processes), FACES_REDIS_URL=self.redis_url,
                    FACES_LIVE_WORKERS=str(self.workers or share), FACES_TRUSTED_PROXIES="1",
                    OPENBLAS_NUM_THREADS="1", **self.env)

    def start_app(self, cores: list[int] | None = None, port: int | None = None) -> App:
        port = port or free_port()
        cores = cores if self.pin else None
        command = [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port),
                   "--data-dir", str(self.data_dir)]
        if cores:
            command = ["taskset", "-c", ",".join(map(str, cores))] + command
        log_path = self.run_dir / f"app-{port}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, cwd=PROJECT_DIR, env=self.app_env(cores), stdout=log,
                                       stderr=subprocess.STDOUT)
        app = App(port, log_path, process, cores)
        self.apps.append(app)
        return app

    def start_worker(self) -> App:
        """The job worker on the data folder and Redis; waits until it has registered in Redis (model loaded)."""
        log_path = self.run_dir / "worker.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "webapp.jobs", "--data-dir", str(self.data_dir)],
                                       cwd=PROJECT_DIR, env=self.app_env(None), stdout=log, stderr=subprocess.STDOUT)
        self.worker = App(0, log_path, process)
        wait_until(self._worker_registered, self.worker, "register in Redis")
        return self.worker

    def _worker_registered(self) -> bool:
        import redis
        from rq import Worker

        try:
            return Worker.count(connection=redis.Redis.from_url(self.redis_url, socket_connect_timeout=1.0)) > 0
        except redis.RedisError:
            return False

    def start_haproxy(self, port: int | None = None, apps: list[App] | None = None,
                      name: str = "haproxy") -> subprocess.Popen:
        """HAProxy in front of `apps` (default: all) on `port` (default: the cluster's); waits for its port."""
        port = port or self.port
        config = self.run_dir / f"{name}.cfg"
        config.write_text(haproxy_config(port, [app.port for app in (apps or self.apps)]))
        log = open(self.run_dir / f"{name}.log", "ab")
        process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start; see {self.run_dir / (name + '.log')}")
            time.sleep(0.02)
        if name == "haproxy":
            self.haproxy = process
        return process

    def stop(self) -> None:
        """Stop HAProxy, the apps and the worker (SIGTERM, then SIGKILL after STOP_WAIT_S) and Redis."""
        _stop(self.haproxy)
        for app in self.apps:
            _stop(app.process)
        if self.worker is not None:
            _stop(self.worker.process)  # SIGTERM: RQ's warm shutdown, after the job at hand (or killed after 10 s)
        self.stop_redis()
        if self.pg is not None:
            self.pg.stop(keep=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(done, app: App, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if app.process.poll() is not None:
            raise RuntimeError(f"{app.label} exited with {app.process.returncode}:\n"
                               f"{app.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{app.label} did not {what} in {timeout:g} s; see {app.log}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="server.py processes (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HAProxy's port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, help="data folder (default: a fresh one in the run folder)")
    parser.add_argument("--pin", action="store_true", help="pin each process to its own share of the cores")
    parser.add_argument("--workers", type=int, help="FACES_LIVE_WORKERS per process (default: cores / processes)")
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL as the store (not SQLite)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    cluster = Cluster(processes=args.processes, port=args.port, data_dir=args.data_dir, pin=args.pin,
                      workers=args.workers, postgres=args.postgres)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop() runs in the finally below
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even when started in the background
    try:
        print(f"starting Redis, {args.processes} app process(es), a job worker and HAProxy (logs in the run "
              "folder) ...", flush=True)
        cluster.start()
        print(f"Faces: {cluster.url}/  (data in {cluster.data_dir}; run folder {cluster.run_dir})")
        if cluster.pg is not None:
            print(f"  PostgreSQL: {cluster.pg.url('faces')} (its folder: {cluster.pg.dir})")
        for app in cluster.apps:
            cores = f", cores {','.join(map(str, app.cores))}" if app.cores else ""
            print(f"  process {app.process.pid}: {app.url}{cores}, log {app.log}")
        print(f"  job worker {cluster.worker.process.pid}: log {cluster.worker.log}")
        print("Ctrl-C stops everything.", flush=True)
        watch(cluster)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        print(f"stopped; the data folder stays: {cluster.data_dir}"
              + (f" (and PostgreSQL's: {cluster.pg.dir})" if cluster.pg is not None else ""))


def watch(cluster: Cluster) -> None:
    """Say when a process exits (HAProxy sends its clients to the others); return when HAProxy does."""
    reported: set[int] = set()
    while cluster.haproxy.poll() is None:
        for app in cluster.apps:
            if app.process.poll() is not None and app.port not in reported:
                reported.add(app.port)
                print(f"process on port {app.port} exited ({app.process.returncode}); the others serve on; "
                      f"see {app.log}", flush=True)
        worker = cluster.worker
        if worker is not None and worker.process.poll() is not None and 0 not in reported:
            reported.add(0)
            print(f"the job worker exited ({worker.process.returncode}); batch work waits in Redis for one; "
                  f"see {worker.log}", flush=True)
        time.sleep(1.0)
    print("haproxy exited; stopping", flush=True)


if __name__ == "__main__":
    main()
