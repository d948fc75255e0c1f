"""A throwaway MariaDB/MySQL server started from the server binary, with its own
data directory, on 127.0.0.1 and a free port: MLflow's metadata store for
`--stack local`. It never touches a server already running on the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from .process import ServiceError, ServiceProcess, free_port, port_in_use

ER_ACCESS_DENIED = 1045
ER_CANNOT_USER = 1396
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin")


def find_server_binary() -> str | None:
    """mariadbd or mysqld, on PATH or in the sbin folders a package puts it in."""
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name) or next(
            (str(Path(d) / name) for d in SEARCH_DIRS if (Path(d) / name).exists()), None
        )
        if found:
            return found
    return None


@dataclass(frozen=True)
class MySQLEndpoint:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    @property
    def sqlalchemy_uri(self) -> str:
        return f"mysql+pymysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connect(self, **kwargs) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            connect_timeout=5,
            **kwargs,
        )


class MySQLServer:
    """`start()` initialises the data directory on first use, starts the server,
    gives root its password and creates the database and user; data survives
    `stop()` for the next session. `restart()` brings it back on the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str,
        password: str,
        root_password: str,
        database: str = "mlflow",
        port: int | None = None,
        binary: str | None = None,
        log: Callable[[str], None] = print,
    ):
        self.workdir = Path(workdir).absolute()
        self.datadir = self.workdir / "data"
        self.socket = self.workdir / "mysqld.sock"
        self.binary = binary or find_server_binary()
        self.port = port
        self.user, self.password, self.database = user, password, database
        self.root_password = root_password
        self.log = log
        self.process: ServiceProcess | None = None
        self.name = f"mysql ({Path(self.binary).name if self.binary else 'mysqld'})"

    def __repr__(self) -> str:
        return f"MySQLServer({self.workdir}, port={self.port})"

    @property
    def endpoint(self) -> MySQLEndpoint:
        return MySQLEndpoint("127.0.0.1", self.port, self.user, self.password, self.database)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _install_db(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if installer is None:
            raise ServiceError(
                "mysql: mariadb-install-db not found next to the server binary (install the mariadb-server package)"
            )
        self.datadir.mkdir(parents=True, exist_ok=True)
        # An explicit env: a vfork()ed child exec'ing the C environ that another thread
        # reallocates (ultralytics' import sets variables) fails with EFAULT.
        result = subprocess.run(
            [
                installer,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
                "--skip-name-resolve",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ),
        )
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise ServiceError(
                f"mysql: {installer} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def start(self) -> MySQLEndpoint:
        if self.binary is None:
            raise ServiceError(
                "mysql: no mariadbd or mysqld binary on PATH or in /usr/sbin; "
                "install mariadb-server or use --stack embedded"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # the socket inside lets local users knock on root's door
        self.process = ServiceProcess("mysql", [], self.workdir, log=self.log)
        self.process.reap_leftover()  # before choosing a port: the leftover may hold it
        self.port = self.port or free_port()
        if port_in_use(self.port):
            raise ServiceError(f"mysql: port {self.port} on 127.0.0.1 is already taken")
        self._install_db()
        self.process.argv = [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.workdir / 'mysqld.pid'}",
            "--user=root",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
        ]
        self.process.start()
        self.process.wait_ready(self._ping, timeout=60)
        self._secure_root()
        self._create_database()
        return self.endpoint

    def alive(self) -> bool:
        return self.process is not None and self.process.running and port_in_use(self.port)

    def restart(self) -> None:
        """The same datadir on the same port; InnoDB recovers what a kill -9 left."""
        self.stop()
        self.start()

    def _root(self, password: str | None = None) -> pymysql.connections.Connection:
        password = self.root_password if password is None else password
        return pymysql.connect(unix_socket=str(self.socket), user="root", password=password, connect_timeout=2)

    def _ping(self) -> bool:
        # Any answer means the server is up, "access denied" included (root may
        # still have no password: _secure_root sets it next).
        try:
            self._root().close()
        except pymysql.err.OperationalError as exc:
            if exc.args[0] != ER_ACCESS_DENIED:
                raise
        return True

    def _secure_root(self) -> None:
        """Give every root account the stack's root password: mariadb-install-db
        leaves them without one, and a datadir from an earlier version kept that."""
        try:
            conn = self._root()
        except pymysql.err.OperationalError as exc:
            if exc.args[0] != ER_ACCESS_DENIED:
                raise
            try:
                conn = self._root(password="")
            except pymysql.err.OperationalError as exc:
                raise ServiceError(
                    f"mysql: root in {self.datadir} accepts neither the stack's root password nor "
                    f"none ({exc.args[-1]}); was credentials.json replaced?"
                ) from None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT host FROM mysql.user WHERE user = 'root' AND authentication_string = ''")
                for (host,) in cur.fetchall():
                    try:
                        cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, self.root_password))
                    except pymysql.err.OperationalError as exc:
                        if exc.args[0] != ER_CANNOT_USER:
                            raise
                        # root@<hostname>: ignored under --skip-name-resolve, and ALTER refuses it
                        cur.execute("DROP USER 'root'@%s", (host,))
            conn.commit()
        finally:
            conn.close()

    def _create_database(self) -> None:
        conn = self._root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
                # The password is new for every stack; ALTER keeps a kept datadir in step.
                for host in ("127.0.0.1", "localhost"):
                    cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
                    cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
                    cur.execute(f"GRANT ALL ON `{self.database}`.* TO %s@%s", (self.user, host))
            conn.commit()
        finally:
            conn.close()

    def reset_database(self) -> None:
        """Drop and recreate the database (used after an interrupted first migration)."""
        conn = self._root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                cur.execute(f"CREATE DATABASE `{self.database}`")
            conn.commit()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
