"""Servers tests start on 127.0.0.1 and stop afterwards: a free port, and a process run until ready."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


def free_port() -> int:
    """A TCP port nothing listens on right now (also a port where a server is surely down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(cmd: list[str], ready: Callable[[], bool], log: Path, *, timeout_s: float, name: str,
            env: dict[str, str] | None = None) -> Iterator[None]:
    """Run ``cmd`` (output to the file ``log``; environment ``env``, default this process's) until ``ready()`` is true; stop it on exit.

    ``ready`` may raise OSError while the server is still starting. The output goes to a file,
    not a pipe: a server that logs a lot while loading would fill a pipe and block.

    Raises:
        RuntimeError: the process exited, or was not ready within ``timeout_s``; with the log's tail.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if ready():
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if proc.poll() is not None else f"was not ready in {timeout_s:.0f} s"
                    raise RuntimeError(f"{name} {state}: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- PostgreSQL ---------------------------------------------------------------------------------

# Debian's layout (the `postgresql` package); PG_BIN overrides it.
PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None when PostgreSQL is not installed."""
    import os
    import shutil

    candidates = [os.environ["PG_BIN"]] if os.environ.get("PG_BIN") else list(PG_BIN_DIRS)
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for folder in candidates:
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


@dataclass(frozen=True)
class PostgresServer:
    """A running throw-away PostgreSQL server: connect as ``user``/``password`` on 127.0.0.1:``port``."""

    port: int
    user: str
    password: str
    database: str

    def url(self, *, password: bool = True, database: str | None = None) -> str:
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database or self.database}"


@contextmanager
def postgres_server(*, user: str = "shop", password: str = "s3cret-pw", database: str = "shop",
                    timeout_s: float = 60) -> Iterator[PostgresServer]:
    """initdb a new cluster in a temp folder, start it on a free 127.0.0.1 port, stop it on exit.

    PostgreSQL refuses to run as root: as root (CI and the sessions) the cluster belongs to the
    ``postgres`` system user and every server command runs through ``runuser -u postgres``;
    otherwise as the current user. The unix socket lives in the temp folder, so nothing touches
    /var/run/postgresql. Password (scram) authentication on TCP, so tests see a real password
    that must never be printed or stored.

    Raises:
        RuntimeError: PostgreSQL is not installed, or the server did not start (with its log).
    """
    import os
    import pwd
    import shutil
    import tempfile

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb); `apt-get install postgresql` or set PG_BIN")
    as_root = os.geteuid() == 0
    # /tmp itself, not pytest's tmp_path: root's pytest folders are 0700, so the postgres user could not reach them.
    root = Path(tempfile.mkdtemp(prefix="shopsight-pg-"))
    data, log, pwfile = root / "data", root / "server.log", root / "pw"
    pwfile.write_text(password + "\n")
    prefix: list[str] = []
    if as_root:
        pg = pwd.getpwnam("postgres")
        for path in (root, pwfile):
            os.chown(path, pg.pw_uid, pg.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout[-1500:]}{done.stderr[-1500:]}")

    port = free_port()
    started = False
    try:
        try:
            run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth-local=trust",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
            started = True  # from here on, stop it whatever happens (pg_ctl may time out with the server up)
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(int(timeout_s)), "start")
            run(str(bin_dir / "psql"), "-h", str(root), "-p", str(port), "-U", user, "-d", "postgres", "-q",
                "-c", f"CREATE DATABASE {database}")
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exc}\n{tail}") from None
        yield PostgresServer(port=port, user=user, password=password, database=database)
    finally:
        if started:
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=timeout_s, check=False)
        shutil.rmtree(root, ignore_errors=True)
