"""Where a sweep's study lives: parsing ``--storage``, opening the Optuna storage, and the lock that lets
workers on one or several machines open the study and claim points one at a time (a file lock for SQLite,
an advisory lock held by the database server for PostgreSQL / MySQL, Optuna's lock for a journal file).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


#: the forms ``--storage`` accepts (named by its error messages)
STORAGE_FORMS = (
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, mysql+pymysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, "
    "sqlite:///PATH, journal:PATH (an Optuna journal file) or a file path (SQLite)"
)
_SERVER_DIALECTS = ("postgresql", "mysql", "mariadb")
_DRIVER_HINTS = {
    "postgresql": "pip install psycopg2-binary",
    "mysql": "pip install PyMySQL and write mysql+pymysql://",
    "mariadb": "pip install PyMySQL and write mariadb+pymysql://",
}


# --------------------------------------------------------------------------------------------
# the storage


@dataclass(frozen=True)
class StorageSpec:
    """Where a study lives: ``kind`` is ``"sqlite"`` or ``"journal"`` (``target`` a file path) or
    ``"server"`` (``target`` a SQLAlchemy URL of a PostgreSQL / MySQL database)."""

    kind: str
    target: str

    @property
    def label(self) -> str:
        """The storage for messages and saved files: a server URL with its password masked."""
        if self.kind == "server":
            return _mask_password(self.target)
        return f"journal:{self.target}" if self.kind == "journal" else self.target

    @property
    def dialect(self) -> str:
        return self.target.split(":", 1)[0].split("+", 1)[0] if self.kind == "server" else "sqlite"


def _mask_password(url: str) -> str:
    return re.sub(r"^([^:/]+://[^:/@]*):[^@]*@", r"\1:***@", url)


def _storage_error(text: str, why: str) -> ValueError:
    return ValueError(f"--storage {_mask_password(text)!r}: {why}; use {STORAGE_FORMS}")


def parse_storage(text: str | None, default: Path) -> StorageSpec:
    """The storage named by ``--storage`` (None: the SQLite file ``default``); raises naming the allowed forms.

    ``postgres://`` is read as ``postgresql://``. A server URL must name a database; SQLite must be a file
    (an in-memory database cannot be shared by workers).
    """
    if text is None:
        return StorageSpec("sqlite", str(default))
    text = text.strip()
    if not text:
        raise _storage_error(text, "empty")
    if text.startswith("journal:"):
        path = text[len("journal:") :]
        path = path[2:] if path.startswith("//") else path  # journal:///abs/path
        if not path:
            raise _storage_error(text, "the journal file is missing")
        return StorageSpec("journal", path)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", text)
    if scheme is None:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", text):  # a URL without // (write ./a:b.db for such a file)
            raise _storage_error(text, "not a storage URL (SCHEME://...) or a file path")
        return StorageSpec("sqlite", text)
    dialect = scheme.group(1).lower().split("+", 1)[0]
    if dialect == "sqlite":
        path = text[len("sqlite:///") :] if text.lower().startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise _storage_error(text, "SQLite needs a file (sqlite:///relative/path or sqlite:////absolute/path)")
        return StorageSpec("sqlite", path)
    if dialect == "postgres":
        text = "postgresql" + text[len("postgres") :]
        dialect = "postgresql"
    if dialect not in _SERVER_DIALECTS:
        raise _storage_error(text, f"unknown kind of storage {scheme.group(1)!r}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as err:
        raise _storage_error(text, f"not a valid URL ({err})") from None
    if not url.database:
        raise _storage_error(text, "the URL names no database (.../DATABASE at its end)")
    return StorageSpec("server", text)


#: the DB-API drivers tried, in order, for a server URL that names none (``postgresql://``, ``mysql://``)
_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg2"), ("psycopg", "psycopg")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
    "mariadb": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}


def _driver_url(spec: StorageSpec) -> str:
    """The server URL with an installed driver: SQLAlchemy's default for ``postgresql://`` is psycopg (3)
    from SQLAlchemy 2.1 on, psycopg2 before; either works, whichever is installed."""
    import importlib.util

    scheme, rest = spec.target.split("://", 1)
    if "+" in scheme:
        return spec.target
    for module, driver in _DRIVERS.get(scheme.lower(), ()):
        if importlib.util.find_spec(module) is not None:
            return f"{scheme}+{driver}://{rest}"
    return spec.target


_ENGINES: dict[str, object] = {}


def _engine(spec: StorageSpec):
    """A SQLAlchemy engine of a server storage for the lock and the clock (one per process and URL)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if spec.target not in _ENGINES:
        try:
            _ENGINES[spec.target] = sqlalchemy.create_engine(_driver_url(spec), poolclass=NullPool)
        except ImportError as err:
            raise _driver_error(spec, err) from None
    return _ENGINES[spec.target]


def _driver_error(spec: StorageSpec, err: Exception) -> ValueError:
    return ValueError(
        f"--storage {spec.label}: the database driver is missing ({err}); {_DRIVER_HINTS.get(spec.dialect, '')}"
    )


def _connection_error(spec: StorageSpec, err: Exception) -> ValueError:
    lines = str(getattr(err, "orig", None) or err).strip().splitlines()
    detail = lines[0] if lines else type(err).__name__
    return ValueError(f"--storage {spec.label}: cannot use the database ({detail})")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock between processes (released by the kernel if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _server_locked(spec: StorageSpec, name: str, hold_timeout: float):
    """An exclusive lock between all workers of the study ``name``, held by the database server.

    PostgreSQL: a transaction-scoped advisory lock; the server releases it when the transaction ends, when
    the holder's connection drops, or after ``hold_timeout`` seconds of an idle holder (a machine that
    vanished without closing its connection). MySQL / MariaDB: ``GET_LOCK``, released with the session.
    """
    import sqlalchemy
    from sqlalchemy.exc import DBAPIError

    key = f"hscl-sweep:{name}"
    engine = _engine(spec)
    try:
        conn = engine.connect()
    except ImportError as err:
        raise _driver_error(spec, err) from None
    except DBAPIError as err:
        raise _connection_error(spec, err) from None
    with conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sqlalchemy.text(f"SET LOCAL idle_in_transaction_session_timeout = {int(hold_timeout * 1000)}"))
            # a signed 64-bit key: two 32-bit halves of the name's checksums
            number = (zlib.crc32(key.encode()) << 31) ^ zlib.adler32(key.encode())
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": number})
            try:
                yield
            finally:
                conn.rollback()  # ends the transaction: releases the lock
        else:
            lock_name = key[:64]
            got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": lock_name}).scalar()
            if got != 1:
                raise RuntimeError(f"the database refused the sweep lock {lock_name!r}")
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": lock_name})
                conn.commit()


def _make_storage(spec: StorageSpec):
    import optuna

    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec.target))
    if spec.kind == "sqlite":
        path = Path(spec.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(
            f"sqlite:///{path.resolve()}", engine_kwargs={"connect_args": {"timeout": 120}}
        )
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:  # NullPool: no idle connections per worker (a server's max_connections bounds the workers)
        return optuna.storages.RDBStorage(_driver_url(spec), engine_kwargs={"poolclass": NullPool})
    except ImportError as err:
        raise _driver_error(spec, err.__cause__ or err) from None
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise _connection_error(spec, err.__cause__ or err) from None


def _clock(storage) -> Callable[[], float]:
    """Seconds since the epoch by the clock all workers of ``storage`` share: the database server's for a
    PostgreSQL / MySQL storage, this machine's for SQLite and journal files."""
    engine = getattr(storage, "engine", None)
    query = {
        "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
        "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
        "mariadb": "SELECT UNIX_TIMESTAMP(NOW(6))",
    }.get(engine.dialect.name if engine is not None else "")
    if query is None:
        return time.time

    def now() -> float:
        import sqlalchemy

        with engine.connect() as conn:
            return float(conn.execute(sqlalchemy.text(query)).scalar())

    return now
