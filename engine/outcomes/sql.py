"""Orders read from PostgreSQL or MariaDB through a server-side cursor, in batches, never all at once.

``postgresql://user@host/shop`` is read with psycopg 3 (``pip install 'pigeon-sms[postgres]'``)
through a named cursor (``DECLARE … CURSOR``: the server keeps the result, the client fetches
:attr:`SqlOrders.fetch` rows at a time); ``mysql://`` or ``mariadb://root@127.0.0.1/shop`` with
PyMySQL (``pip install 'pigeon-sms[mariadb]'``) through its unbuffered cursor (``SSCursor``: rows
are read off the connection as they are fetched, none are buffered whole). Either reads
``--table`` (just the order columns are selected, each name quoted) or runs ``--query`` as the
merchant wrote it (its result must name the order columns). Rows are numbered from 1 in the order
the result gives them; a password in the address is never shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from engine.core.errors import ConfigError, SourceError
from engine.outcomes.orders import OrderColumns, check_columns
from engine.pipeline.source import SourceBatch

__all__ = ["SCHEMES", "SqlOrders", "is_database", "open_sql_orders", "redact"]

SCHEMES: Final = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mariadb", "mariadb": "mariadb"}
"""Address schemes → the database kind."""
_CURSOR: Final = "pigeon_rfm_orders"


def is_database(orders: str) -> bool:
    """Whether ``orders`` is a database address rather than a file name."""
    scheme, sep, _ = orders.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def redact(dsn: str) -> str:
    """The address with its password replaced by ``***``."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", dsn)


class SqlOrders:
    """An open query over orders, read in batches (the :class:`engine.pipeline.source.SegmentReader`
    contract, with database values as the driver gives them: str, datetime, Decimal…)."""

    fetch = 10_000
    """Rows fetched from the server at a time."""

    def __init__(self, kind: str, conn: Any, cursor: Any, columns: list[str], where: str) -> None:
        self.kind = kind
        self._conn = conn
        self._cur = cursor
        self.columns: Sequence[str] = columns
        self.where = where
        """The address (password hidden) and what is read, for messages."""
        self._done = False

    def batches(self, size: int) -> Iterator[SourceBatch]:
        """Yield batches of up to ``size`` rows until the result is exhausted."""
        row = 0
        while True:
            try:
                rows: list[Sequence[Any]] = self._cur.fetchmany(size)
            except Exception as exc:
                raise SourceError(f"{self.where}: reading failed: {_first_line(exc)}") from exc
            if not rows:
                self._done = True
                return
            yield SourceBatch(list(range(row + 1, row + len(rows) + 1)), rows, [])
            row += len(rows)

    def fraction_read(self) -> float | None:
        """Unknown: a query's size is not known before it ends."""
        return None

    def close(self) -> None:
        """Close the cursor and the connection (nothing was written: the transaction is dropped)."""
        try:
            if self.kind == "postgres":
                self._cur.close()
                self._conn.rollback()
            elif self._done:
                self._cur.close()
        except Exception:  # closing after a failure: the connection goes anyway
            pass
        finally:
            self._conn.close()


def _close_quietly(cur: Any, conn: Any) -> None:
    """Close a cursor that may be half made and its connection, after a failure."""
    try:
        if cur is not None:
            cur.close()
    except Exception:  # the transaction failed already: closing the connection ends the cursor too
        pass
    finally:
        conn.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_sql_orders(
    dsn: str, columns: OrderColumns, *, table: str | None = None, query: str | None = None
) -> SqlOrders:
    """Run the query (``SELECT`` the order columns ``FROM table``, or ``query``) on a server-side
    cursor; raises :class:`SourceError` when the server, the table or a column is not there."""
    if (table is None) == (query is None):
        raise ConfigError("command line", "--table/--query", "a database needs --table NAME or --query SQL")
    kind = SCHEMES[dsn.partition("://")[0].lower()]
    what = f"table {table}" if table else "the query"
    where = f"{redact(dsn)} ({what})"
    opener = _open_postgres if kind == "postgres" else _open_mariadb
    reader = opener(dsn, columns, table, query, where)
    try:
        check_columns(reader.columns, columns, where)
    except BaseException:
        reader.close()
        raise
    return reader


def _open_postgres(
    dsn: str, columns: OrderColumns, table: str | None, query: str | None, where: str
) -> SqlOrders:
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        raise SourceError(
            "reading orders from PostgreSQL needs psycopg: pip install 'pigeon-sms[postgres]'"
        ) from None
    try:
        conn = psycopg.connect(dsn, autocommit=False)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to {redact(dsn)}: {_first_line(exc)}") from None
    cur = None
    try:
        conn.read_only = True
        statement: sql.Composable
        if table is not None:
            name = sql.Identifier(*table.split("."))
            # the table's columns first: a missing one is named with the ones it has
            probe = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(name))
            check_columns([d.name for d in probe.description or ()], columns, where)
            statement = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in columns.names()), name
            )
        else:
            assert query is not None
            statement = sql.SQL(query)  # the merchant's own query, as written
        cur = conn.cursor(name=_CURSOR)
        cur.itersize = SqlOrders.fetch
        cur.execute(statement)
        names = [d.name for d in cur.description or ()]
    except BaseException as exc:
        _close_quietly(cur, conn)
        if isinstance(exc, psycopg.Error):
            raise SourceError(f"{where}: {_first_line(exc)}") from None
        raise
    return SqlOrders("postgres", conn, cur, names, where)


def _mariadb_params(dsn: str) -> dict[str, Any]:
    u = urlsplit(dsn)
    params: dict[str, Any] = {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 3306,
        "user": unquote(u.username or "root"),
        "password": unquote(u.password or ""),
        "charset": "utf8mb4",
    }
    database = unquote(u.path.lstrip("/"))
    if database:
        params["database"] = database
    for key, values in parse_qs(u.query).items():
        if key in ("unix_socket", "charset") and values:
            params[key] = values[-1]
    return params


def _quote_mariadb(name: str) -> str:
    return ".".join("`" + part.replace("`", "``") + "`" for part in name.split("."))


def _open_mariadb(
    dsn: str, columns: OrderColumns, table: str | None, query: str | None, where: str
) -> SqlOrders:
    try:
        import pymysql
        import pymysql.cursors
    except ImportError:
        raise SourceError(
            "reading orders from MariaDB needs PyMySQL: pip install 'pigeon-sms[mariadb]'"
        ) from None
    try:
        conn = pymysql.connect(**_mariadb_params(dsn), cursorclass=pymysql.cursors.SSCursor)
    except pymysql.MySQLError as exc:
        raise SourceError(f"cannot connect to {redact(dsn)}: {_first_line(exc)}") from None
    cur = None
    try:
        if table is not None:
            probe = conn.cursor(pymysql.cursors.Cursor)
            probe.execute(f"SELECT * FROM {_quote_mariadb(table)} LIMIT 0")
            have = [d[0] for d in probe.description or ()]
            probe.close()
            check_columns(have, columns, where)
            statement = (
                f"SELECT {', '.join(map(_quote_mariadb, columns.names()))} FROM {_quote_mariadb(table)}"
            )
        else:
            assert query is not None
            statement = query
        cur = conn.cursor()
        cur.execute(statement)
        names = [d[0] for d in cur.description or ()]
    except BaseException as exc:
        conn.close()
        if isinstance(exc, pymysql.MySQLError):
            raise SourceError(f"{where}: {_first_line(exc)}") from None
        raise
    return SqlOrders("mariadb", conn, cur, names, where)
