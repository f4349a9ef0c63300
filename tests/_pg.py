"""A throwaway PostgreSQL cluster for the distributed tests.

``postgres_url()`` is a context manager: it runs ``initdb`` into a fresh temporary folder,
starts the server on 127.0.0.1 at a free port (its Unix socket also lives in that folder, so
nothing on the machine is touched), creates a database, yields a SQLAlchemy URL
(``postgresql+psycopg2://...``), then stops the server and deletes the folder.

PostgreSQL refuses to run as root. When the tests run as root (CI containers), the cluster is
owned by, and the server runs as, an unprivileged system user: ``postgres`` (created by the
Debian package ``postgresql``), else ``nobody``. The switch is done by ``subprocess`` itself
(``user=``/``group=``), so no ``su``/``sudo``/``runuser`` is needed.

The binaries are looked up on ``PATH`` and then in ``/usr/lib/postgresql/*/bin`` (where the Debian
package puts them, off ``PATH``). ``find_pg_bin()`` returns ``None`` when there are none, and
``missing_reason()`` says why the PostgreSQL test cannot run; the test skips with that reason, or
fails in CI (``CI=true``), where ``.ci/postgres.sh`` must have installed the server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator

__all__ = ["find_pg_bin", "in_ci", "missing_reason", "postgres_url"]

_DB_NAME = "optuna_ift"
_DB_USER = "ift"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path)) or (0,)


def find_pg_bin() -> str | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version), or None."""
    candidates: list[str] = []
    env_dir = os.environ.get("PG_BIN")
    if env_dir:
        candidates.append(env_dir)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
        candidates.append(os.path.dirname(on_path))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), key=_version_key, reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, exe), os.X_OK)
               for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def missing_reason() -> str | None:
    """Why the PostgreSQL test cannot run here, or None when it can."""
    if find_pg_bin() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install the Debian package `postgresql` "
            "(.ci/postgres.sh does it in CI)"
        )
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary, part of the test extra)"
    if os.geteuid() == 0 and _service_user() is None:
        return ("running as root and neither a `postgres` nor a `nobody` user exists "
                "to run the server")
    return None


def _service_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _temp_parent() -> str:
    """The system temporary folder, or /tmp when the service user cannot traverse it or the
    Unix socket path (``<folder>/optuna-ift-pg-XXXX/.s.PGSQL.<port>``, at most 107 bytes) would
    get too long."""
    parent = tempfile.gettempdir()
    if len(parent) > 60:
        return "/tmp"
    if os.geteuid() == 0:
        path = os.path.realpath(parent)
        while True:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return "/tmp"
            if path == os.path.dirname(path):
                break
            path = os.path.dirname(path)
    return parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Runner:
    """Runs the PostgreSQL binaries as the current user, or as a service user when root."""

    def __init__(self, home: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env.update(LC_ALL="C", LANG="C", HOME=home, TZ="UTC")
        self.kwargs: dict = {}
        if os.geteuid() == 0:
            user = _service_user()
            assert user is not None
            self.uid, self.gid = user.pw_uid, user.pw_gid
            self.kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            self.env.update(USER=user.pw_name, LOGNAME=user.pw_name)
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    def __call__(self, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            args,
            env=self.env,
            cwd=self.env["HOME"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            **self.kwargs,
        )


def _check(proc: subprocess.CompletedProcess, what: str, log: str | None = None) -> None:
    if proc.returncode != 0:
        extra = ""
        if log and os.path.exists(log):
            with open(log, errors="replace") as f:
                extra = "\n--- server log ---\n" + f.read()[-4000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}{extra}")


@contextlib.contextmanager
def postgres_url(*, start_timeout: float = 60.0) -> Iterator[str]:
    """Start a throwaway cluster; yield ``postgresql+psycopg2://ift@127.0.0.1:PORT/optuna_ift``."""
    import psycopg2

    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError(missing_reason())
    # mkdtemp, not pytest's tmp_path (whose parents are 0700, root-only): the service user
    # must reach it, and the socket path must stay short.
    root = tempfile.mkdtemp(prefix="optuna-ift-pg-", dir=_temp_parent())
    run = _Runner(root)
    os.chmod(root, 0o700)
    os.chown(root, run.uid, run.gid)
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    started = False
    try:
        _check(
            run(
                [
                    os.path.join(bindir, "initdb"),
                    "-D", data,
                    "-U", _DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                timeout=start_timeout,
            ),
            "initdb",
        )
        # Throwaway data: trade durability for speed. Loopback TCP plus a socket in our folder.
        base_opts = (
            f"-c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
        )
        port = None
        for _attempt in range(5):  # the free port may be taken between probing and binding
            port = _free_port()
            proc = run(
                [
                    os.path.join(bindir, "pg_ctl"),
                    "start", "-w", "-t", str(int(start_timeout)),
                    "-D", data, "-l", log,
                    "-o", f"-p {port} {base_opts}",
                ],
                timeout=start_timeout + 10,
            )
            started = True  # pg_ctl may have started it even if it reports failure: stop in finally
            if proc.returncode == 0:
                break
            with open(log, errors="replace") as f:
                if "could not bind" not in f.read() and "in use" not in proc.stdout:
                    _check(proc, "pg_ctl start", log)
        else:
            _check(proc, "pg_ctl start", log)
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user=_DB_USER,
                                        dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {_DB_NAME}")
        finally:
            conn.close()
        yield f"postgresql+psycopg2://{_DB_USER}@127.0.0.1:{port}/{_DB_NAME}"
    finally:
        if started:
            pg_ctl = os.path.join(bindir, "pg_ctl")
            stop = run([pg_ctl, "stop", "-D", data, "-m", "fast", "-w", "-t", "30"])
            if stop.returncode != 0:
                run([pg_ctl, "stop", "-D", data, "-m", "immediate", "-w", "-t", "30"])
        shutil.rmtree(root, ignore_errors=True)
