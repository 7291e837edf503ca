"""A PostgreSQL server of our own, for ``make cluster``, the tests and the benchmarks.

Several gateway replicas share one model store in PostgreSQL (``GRADBOOK_STORE`` set to a
``postgresql://`` URL). To run that on one machine without touching a system-wide cluster (its
configuration, its users, its port), ``PostgresServer`` keeps a cluster in a folder of ours:
``initdb`` on first use, then ``postgres`` itself as our child process, so that we know its PID
(``kill()`` is a real crash of the postmaster, for fault tests) and it stops with us.

Choices, and why:

* Only TCP on 127.0.0.1 and a Unix socket inside the data folder (which only the server's OS
  user may enter), and a password for every connection (``scram-sha-256``; ``pg_hba.conf`` is
  written by us). 127.0.0.1 is open to every local user, so ``trust`` there would make each of
  them the database's superuser, able to change the models and to run shell commands as the
  server's user (``COPY … TO PROGRAM``).
* Two roles, each with a password drawn at ``initdb``: the superuser ``postgres``, which only
  this module uses (to create the service's role and databases), and ``gradbook``
  (``SERVICE_ROLE``), which the service connects as: no superuser, no role or database
  creation, owner of its databases and of nothing else; other roles may not connect to them.
* The passwords live in a libpq password file beside the data folder (``<data>.pgpass``,
  mode 0600, owned by the user who runs this module, never by the server's OS user), and URLs
  name that file (``?passfile=…``) rather than hold a password: nothing secret reaches a
  command line, an environment, a log or ``/diagnostics``. A cluster made before this (with
  ``trust``) is given passwords the first time it starts.
* ``durable=True`` (the default) keeps PostgreSQL's crash safety (``fsync``, full page writes).
  Tests may pass ``durable=False``: a throw-away cluster need not survive a power cut, and
  ``fsync=off`` makes commits much cheaper on slow disks. A kill of the postmaster (not of the
  machine) loses nothing either way: the data is in the kernel's page cache.
* PostgreSQL refuses to run as root. When we are root (CI, containers) initdb and postgres run
  as Debian's ``postgres`` user (created by the ``postgresql`` package), which then owns the data
  folder; every folder above it must let that user pass (``x`` for others).
* The binaries are looked for on ``PATH`` first, then in Debian's
  ``/usr/lib/postgresql/<version>/bin`` (highest version), where the package puts them without
  putting them on ``PATH``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

DEBIAN_BIN = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"  # the OS user Debian's package creates, and our superuser's name
SERVICE_ROLE = "gradbook"  # the role the service connects as: owns its databases, nothing else
HBA = (
    "# written by service/app/postgres.py: every connection needs its role's password\n"
    "local all all scram-sha-256\n"
    "host  all all 127.0.0.1/32 scram-sha-256\n"
)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; ".s.PGSQL.<port>" must fit after the folder
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    """PostgreSQL cannot be found, set up, started or reached; the message says what to do."""


def find_binaries() -> Path:
    """The folder holding ``postgres``, ``initdb`` and ``pg_ctl``.

    ``PATH`` wins (a self-built or non-Debian PostgreSQL), then the highest version under
    ``/usr/lib/postgresql``."""
    on_path = [shutil.which(name) for name in ("postgres", "initdb")]
    if all(on_path):
        folders = {Path(found).resolve().parent for found in on_path}  # type: ignore[arg-type]
        if len(folders) == 1:
            return folders.pop()
    versions = []
    if DEBIAN_BIN.is_dir():
        for entry in DEBIAN_BIN.iterdir():
            if (entry / "bin" / "postgres").is_file() and (entry / "bin" / "initdb").is_file():
                versions.append((_version_key(entry.name), entry / "bin"))
    if versions:
        return max(versions)[1]
    raise PostgresError(
        "PostgreSQL's server programs (postgres, initdb) are neither on PATH nor in "
        f"{DEBIAN_BIN}/<version>/bin: install Debian's package `postgresql` "
        "(sudo apt-get install postgresql), or run tools/system-packages.sh as root"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


class PostgresServer:
    """A PostgreSQL cluster in ``datadir``, served on 127.0.0.1:``port`` while started.

    ``start()`` creates the cluster if ``datadir`` holds none, starts the postmaster and returns
    once it accepts connections; ``stop()`` is a fast shutdown (open transactions are rolled
    back, clients disconnected); ``kill()`` is SIGKILL of the postmaster, as a crash would be.
    ``start()`` after either one works again (after ``kill()`` PostgreSQL runs crash recovery).
    As a context manager it is started on entry (unless running) and stopped on exit.
    """

    def __init__(self, datadir: Path | str, port: int, *, durable: bool = True,
                 max_connections: int = 200) -> None:
        self.datadir = Path(datadir).resolve()
        self.port = port
        self.durable = durable
        self.max_connections = max_connections
        self.log = self.datadir / "server.log"
        self.passfile = self.datadir.with_name(f"{self.datadir.name}.pgpass")
        self.process: subprocess.Popen[bytes] | None = None
        self._bin: Path | None = None
        self._user = _service_user()

    # -- where and as whom -------------------------------------------------------------------
    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = find_binaries()
        return self._bin

    @property
    def socket_dir(self) -> Path | None:
        """The folder of the Unix socket (the data folder), or None if its path is too long
        for a socket address: then the server listens on TCP only."""
        socket_path = self.datadir / f".s.PGSQL.{self.port}"
        return self.datadir if len(str(socket_path)) <= SOCKET_PATH_MAX else None

    @property
    def user(self) -> str:
        """The database superuser (and, when we are root, the OS user running the server)."""
        return SERVICE_USER

    def url(self, dbname: str = "gradbook", role: str = SERVICE_USER) -> str:
        """A libpq URL of database ``dbname`` on this server as ``role``; the password is in
        the password file it names, not in the URL."""
        passfile = quote(str(self.passfile), safe="/")
        return f"postgresql://{role}@127.0.0.1:{self.port}/{dbname}?passfile={passfile}"

    @property
    def running(self) -> bool:
        """Whether the postmaster we started is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process else None

    # -- life --------------------------------------------------------------------------------
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").is_file()

    def init(self) -> None:
        """``initdb`` the data folder with passwords, and write our ``pg_hba.conf``."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        if any(self.datadir.iterdir()):
            raise PostgresError(f"{self.datadir} is not empty and holds no PostgreSQL cluster "
                                "(no PG_VERSION): choose an empty or a new folder")
        self._hand_over(self.datadir)
        password = self._new_passwords()[SERVICE_USER]
        # initdb reads the superuser's password from a file its OS user can read: ours for a
        # moment, then gone
        handle, pwfile = tempfile.mkstemp(prefix="gradbook-pw-")
        try:
            os.write(handle, password.encode() + b"\n")
            os.close(handle)
            self._chown(Path(pwfile))
            command = [str(self.bin / "initdb"), "-D", str(self.datadir), "-U", self.user,
                       f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                       "--locale=C", "--no-instructions"]
            if not self.durable:
                command.append("--no-sync")
            done = self._run(command)
        finally:
            Path(pwfile).unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresError(f"initdb of {self.datadir} failed (exit status "
                                f"{done.returncode}):\n{done.stdout.decode(errors='replace')}")
        self._write_hba()

    def _write_hba(self) -> None:
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(HBA)
        self._chown(hba)

    def _new_passwords(self) -> dict[str, str]:
        """Draw a password for the superuser and the service's role, and write them to the
        password file (mode 0600, ours: libpq ignores a file others may read)."""
        passwords = {role: secrets.token_urlsafe(32) for role in (SERVICE_USER, SERVICE_ROLE)}
        lines = "".join(f"*:*:*:{role}:{password}\n" for role, password in passwords.items())
        staging = self.passfile.with_name(f".{self.passfile.name}.staging")
        staging.unlink(missing_ok=True)
        handle = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as out:
            out.write(lines)
        os.replace(staging, self.passfile)
        return passwords

    def _passwords(self) -> dict[str, str]:
        """The passwords of the password file, by role."""
        try:
            lines = self.passfile.read_text().splitlines()
        except FileNotFoundError:
            raise PostgresError(
                f"{self.datadir} holds a cluster but its password file {self.passfile} is "
                "missing: restore it, or remove the data folder (its models go with it)") \
                from None
        return dict(line.split(":", 4)[3:] for line in lines if line.count(":") >= 4)

    def _trusting(self) -> bool:
        """Whether the cluster was made before passwords (its pg_hba.conf trusts)."""
        try:
            hba = (self.datadir / "pg_hba.conf").read_text()
        except OSError:
            return False
        return any(line.split()[-1:] == ["trust"] for line in hba.splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))

    def _require_passwords(self) -> None:
        """Give a cluster made with ``trust`` its passwords, while trust still lets us in; then
        every connection needs one."""
        import psycopg

        passwords = self._new_passwords()
        url = f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
            db.execute(_with_password("ALTER ROLE {} PASSWORD {}", SERVICE_USER,
                                      passwords[SERVICE_USER]))
            self._write_hba()
            db.execute("SELECT pg_reload_conf()")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the postmaster (creating the cluster first if needed) and wait until it
        accepts connections; on failure stop it and raise with the end of its log."""
        if self.running:
            return
        if not self.initialized():
            self.init()
        self._check_version()
        if not self._trusting() and not self.passfile.exists():
            self._passwords()  # says what is missing and what to do
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir or ""),
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        command = [str(self.bin / "postgres"), "-D", str(self.datadir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self.log, "ab") as log:
            self._chown(self.log)
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd="/", start_new_session=True,  # Ctrl-C in our terminal is ours to pass on
                **self._as_service_user())
        trusting = self._trusting()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PostgresError(f"PostgreSQL on port {self.port} stopped while starting "
                                    f"(exit status {self.process.returncode}); {self._log_end()}")
            if self._accepts():
                if trusting:
                    self._require_passwords()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"PostgreSQL on port {self.port} did not accept connections "
                                    f"within {timeout:.0f} s; {self._log_end()}")
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT); immediate (SIGQUIT) if it takes longer than ``timeout``,
        then SIGKILL."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0),
                          (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                break
            try:
                self.process.send_signal(sig)
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster, as a crash would; return once its backends have gone too
        (they notice the postmaster's death by themselves), so that ``start()`` may follow."""
        if not self.running or self.process is None:
            return
        children = _child_pids(self.process.pid)
        self.process.kill()
        self.process.wait()
        deadline = time.monotonic() + timeout
        while (living := [pid for pid in children if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in living:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- databases ---------------------------------------------------------------------------
    def create_database(self, name: str) -> str:
        """Create database ``name``, owned by the service's role, unless it exists; the URL the
        service connects to it with (as ``SERVICE_ROLE``)."""
        if not IDENTIFIER.fullmatch(name):
            raise ValueError(f"database name {name!r}: letters, digits and _ only (at most 63)")
        import psycopg  # only here: the rest of this module needs no driver

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as db:
            self._ensure_service_role(db)
            exists = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                db.execute(f'CREATE DATABASE "{name}" OWNER {SERVICE_ROLE}')
            # only its owner (and the superuser) may connect, create temporary tables in it
            db.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
        return self.url(name, SERVICE_ROLE)

    def _ensure_service_role(self, db: Any) -> None:
        """The service's role, with the password of the password file: may log in and own its
        databases, nothing more (no superuser, no roles, no databases, no replication)."""
        password = self._passwords().get(SERVICE_ROLE)
        if password is None:
            raise PostgresError(f"the password file {self.passfile} has no password for "
                                f"{SERVICE_ROLE!r}: remove the data folder and its password "
                                "file to start afresh (the models go with them)")
        exists = db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (SERVICE_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        db.execute(_with_password(f"{verb} ROLE {{}} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                  "NOREPLICATION NOBYPASSRLS PASSWORD {}", SERVICE_ROLE,
                                  password))
        # the superuser's own database is no business of the service
        db.execute("REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC")

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"PostgresServer({str(self.datadir)!r}, port={self.port}, {state})"

    # -- helpers -----------------------------------------------------------------------------
    def _accepts(self) -> bool:
        """Whether the server answers a connection (not merely a TCP handshake: a server still
        recovering refuses with "the database system is starting up")."""
        try:
            import psycopg
        except ImportError:  # no driver: pg_isready says the same
            ready = self._run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", self.user, "-d", "postgres"])
            return ready.returncode == 0
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def _check_version(self) -> None:
        """A cluster made by another major version cannot be served by this one."""
        made_by = (self.datadir / "PG_VERSION").read_text().strip()
        done = self._run([str(self.bin / "postgres"), "--version"])
        ours = re.search(r"(\d+)(?:\.\d+)?", done.stdout.decode())
        if ours and ours.group(1) != made_by.split(".")[0]:
            raise PostgresError(f"{self.datadir} was made by PostgreSQL {made_by}, but "
                                f"{self.bin} is {ours.group(0)}: remove the folder (its models "
                                f"go with it) or point PATH at PostgreSQL {made_by}")

    def _log_end(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
            return f"the end of its log ({self.log}):\n{text[-chars:]}"
        except OSError:
            return f"no log at {self.log}"

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, cwd="/", check=False,
                              **self._as_service_user())

    def _as_service_user(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a program as the service user when we are root."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": self._user.pw_dir, "USER": SERVICE_USER,
                        "LOGNAME": SERVICE_USER}}

    def _hand_over(self, folder: Path) -> None:
        """As root: give ``folder`` to the service user, and check it can reach it."""
        if self._user is None:
            return
        for above in folder.parents:
            if not os.stat(above).st_mode & 0o001 and os.stat(above).st_uid != self._user.pw_uid:
                raise PostgresError(
                    f"PostgreSQL runs as the OS user {SERVICE_USER!r} (it refuses root), which "
                    f"cannot enter {above} (mode {oct(os.stat(above).st_mode & 0o777)}): put "
                    "the data folder elsewhere, or allow others to pass (chmod o+x)")
        self._chown(folder)
        folder.chmod(0o700)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)


def _with_password(statement: str, role: str, password: str) -> Any:
    """``statement`` with ``role`` and ``password`` quoted in (a role's password cannot be a
    bound parameter: PostgreSQL takes none in utility statements)."""
    from psycopg import sql

    return sql.SQL(statement).format(sql.Identifier(role), sql.Literal(password))


def _service_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root, and there is no {SERVICE_USER!r} user to run it "
            "as: install Debian's package `postgresql` (it creates that user), or run as a user "
            "other than root") from None


def _child_pids(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
