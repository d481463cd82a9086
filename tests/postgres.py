"""A real PostgreSQL server for the tests (`mlpkit sweep --storage postgresql://...`).

The session-scoped `postgres` fixture runs Debian's server binaries in a fresh temporary folder:
initdb (trust auth, C locale, UTF8), then a server listening on 127.0.0.1 at a free port with its
unix socket in that folder, stopped (pg_ctl stop -m fast) and removed at the end of the session.
The server refuses to run as root, and the tests and CI do run as root: then the folder is given
to an unprivileged system user (`postgres`, which the Debian package creates, else `nobody`) and
every server command runs as that user. As anyone else, the server runs as the current user.

Without the binaries (or psycopg) the fixture skips with the reason on a developer's machine and
fails under CI=true, so that no test skips in CI for want of the server.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

DRIVER_SCHEME = "postgresql+psycopg://"  # SQLAlchemy's name for psycopg 3
SUPERUSER = "mlpkit"  # the database role initdb creates, whoever owns the files
DATABASE = "mlpkit"  # created at start: `Postgres.url` points at it
START_TIMEOUT_S = 30
PORT_TRIES = 3  # a free port can be taken between our probe and the server's bind
SERVER_USERS = ("postgres", "nobody")  # tried in order when running as root
BIN_GLOB = "/usr/lib/postgresql/*/bin"


@dataclass(frozen=True)
class Owner:
    """The OS user the server runs as; `switch` says whether commands must drop root for it."""

    name: str
    uid: int
    gid: int
    switch: bool


@dataclass
class Postgres:
    """A running server: `url` names its `mlpkit` database; `new_database()` makes a fresh one.

    URLs are SQLAlchemy's, for optuna.storages.RDBStorage and `--storage`, with the driver
    spelled out (`postgresql+psycopg://`): a bare `postgresql://` means psycopg (3) only from
    SQLAlchemy 2.1 on, psycopg2 before. `libpq(url)` gives the form psycopg.connect takes.
    """

    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def url_for(self, database: str) -> str:
        return f"{DRIVER_SCHEME}{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def new_database(self) -> str:
        """Create an empty database with a name not used before in this session: its URL."""
        name = f"test_{next(self._numbers)}"
        create_database(self, name)
        return self.url_for(name)


def libpq(url: str) -> str:
    """A URL of this server as libpq (psycopg.connect) reads it: no `+driver` in the scheme."""
    assert url.startswith(DRIVER_SCHEME), url
    return "postgresql://" + url.removeprefix(DRIVER_SCHEME)


def create_database(server: Postgres, name: str) -> None:
    import psycopg

    # autocommit: CREATE DATABASE cannot run inside a transaction
    with psycopg.connect(libpq(server.url_for("postgres")), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where every test must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def find_bindir() -> Path:
    """The folder with initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).parent] if on_path else []
    by_version = sorted(Path("/").glob(BIN_GLOB.lstrip("/")), key=lambda p: int(p.parent.name))
    candidates += reversed(by_version)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    unavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not on PATH nor in {BIN_GLOB}")


def pick_owner() -> Owner:
    """Root hands the server to an existing unprivileged user; anyone else runs it."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Owner(me.pw_name, me.pw_uid, me.pw_gid, switch=False)
    for name in SERVER_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Owner(name, entry.pw_uid, entry.pw_gid, switch=True)
    pytest.fail(f"running as root and none of the users {SERVER_USERS} exists", pytrace=False)


def temp_base(owner: Owner) -> Path:
    """Where the server's folder goes: the temp dir, unless root's TMPDIR is closed to others
    (the server user could not reach it), then /tmp. Short: a socket path holds 107 bytes."""
    base = Path(tempfile.gettempdir())
    if owner.switch and not all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        return Path("/tmp")
    return base


def run_as(owner: Owner, root: Path, *cmd: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a server command as `owner`, in `root` (a cwd it can read), with a small fixed env."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=root,
        env=env,
        user=owner.uid if owner.switch else None,
        group=owner.gid if owner.switch else None,
        extra_groups=[] if owner.switch else None,  # drop root's supplementary groups
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 15,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no server log written)"
    return "\n".join(text.splitlines()[-lines:])


def broken(what: str, proc: subprocess.CompletedProcess[str] | None, log: Path) -> NoReturn:
    """The binaries are there but the server would not come up: always a failure."""
    output = f"\n--- output ---\n{proc.stdout}{proc.stderr}" if proc else ""
    pytest.fail(f"{what}{output}\n--- server log (tail) ---\n{log_tail(log)}", pytrace=False)


def init_cluster(bindir: Path, owner: Owner, root: Path) -> Path:
    """initdb a data folder in `root`, listening on loopback only, socket in `root`."""
    data = root / "data"
    proc = run_as(
        owner, root, bindir / "initdb", "-D", data, "-U", SUPERUSER, "-A", "trust",
        "--no-locale", "-E", "UTF8", "--no-sync", "--no-instructions",
    )  # fmt: skip
    if proc.returncode != 0:
        broken(f"initdb failed (as {owner.name}) in {root}", proc, root / "server.log")
    settings = [
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{root}'",
        "fsync = off",  # a throwaway server: durability buys nothing here
        "synchronous_commit = off",
        "full_page_writes = off",
    ]
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n".join(settings) + "\n")
    return data


def start_server(bindir: Path, owner: Owner, root: Path, data: Path) -> Postgres:
    """pg_ctl start at a free port, retried on a port taken meanwhile; waits for connections."""
    log = root / "server.log"
    for _ in range(PORT_TRIES):
        port = free_port()
        proc = run_as(
            owner, root, bindir / "pg_ctl", "start", "-D", data, "-l", log,
            "-w", "-t", str(START_TIMEOUT_S), "-o", f"-p {port}",
        )  # fmt: skip
        if proc.returncode == 0:
            return Postgres(port)
        if "could not bind" not in log_tail(log):
            break
    broken(f"the server did not accept connections within {START_TIMEOUT_S} s", proc, log)


def stop_server(bindir: Path, owner: Owner, root: Path) -> None:
    """pg_ctl stop -m fast, if a server was started at all (its postmaster.pid is there)."""
    data = root / "data"
    if not (data / "postmaster.pid").exists():
        return
    proc = run_as(owner, root, bindir / "pg_ctl", "stop", "-D", data, "-m", "fast", "-w")
    if proc.returncode != 0:
        # Leave no server behind: its backends exit when they see the postmaster gone.
        with suppress(OSError, ValueError, IndexError):
            os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        broken("pg_ctl stop -m fast failed; the postmaster was killed", proc, root / "server.log")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session, gone (process and files) when it ends."""
    bindir = find_bindir()
    try:
        import psycopg  # noqa: F401  (the driver the URLs name)
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[dev]' brings it)")
    owner = pick_owner()
    root = Path(tempfile.mkdtemp(prefix="mlpkit-pg-", dir=temp_base(owner)))
    try:
        if owner.switch:
            os.chown(root, owner.uid, owner.gid)
        data = init_cluster(bindir, owner, root)
        server = start_server(bindir, owner, root, data)
        try:
            create_database(server, DATABASE)
        except Exception as error:
            broken(
                f"the server started but refused a connection: {error}", None, root / "server.log"
            )
        yield server
    finally:
        try:
            stop_server(bindir, owner, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
