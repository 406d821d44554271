"""Bulk writes: COPY on PostgreSQL, executemany elsewhere.

Row-by-row statements (even pipelined) cost a round of client-side work per row, and
multi-row VALUES statements cost psycopg a parse of the whole text every time. COPY costs
neither: straight into the table when there is nothing to decide per row, else into a
temporary table, then one INSERT ... SELECT with the conflict rule. The COPY is binary
with the columns' types given up front, so psycopg neither formats text nor looks up a
dumper per value, and rows can be handed over as tuples (`insert_rows`) without a dict each.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Connection, Integer, Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from notifier.store.schema import UTCDateTime


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]], *, keys: list[str] | None = None,
                update: bool = False, returning: str | None = None) -> list[Any]:
    """Insert `rows`; with `keys`, rows that conflict on them are skipped (or, with `update`,
    overwrite the other columns). Returns the `returning` column of the rows written."""
    if not rows:
        return []
    columns = list(rows[0])
    if conn.dialect.name == "postgresql":
        return _copy_insert(conn, table, columns, [tuple(row[c] for c in columns) for row in rows], keys, update,
                            returning)
    stmt = sqlite.insert(table)
    if keys and update:
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in columns
                                                                     if c not in keys})
    elif keys:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    if returning:
        return [conn.execute(stmt.values(**row).returning(table.c[returning])).scalar() for row in rows]
    conn.execute(stmt, rows)
    return []


def insert_rows(conn: Connection, table: Table, columns: list[str], rows: list[tuple[Any, ...]], *,
                keys: list[str] | None = None, update: bool = False, returning: str | None = None,
                expect_new: bool = False) -> list[Any]:
    """`bulk_insert` for rows given as tuples in the order of `columns`. `expect_new`: the rows
    are not expected to conflict on `keys` (a conflict is a rare duplicate), so on PostgreSQL they
    are COPYed straight into the table in a savepoint, and only if that meets a conflict are they
    written again through the temporary table with the conflict rule (skip, or with `update`
    overwrite): the common case writes each row once instead of twice."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        if expect_new and keys:
            written = _copy_unless_conflict(conn, table, columns, rows, returning)
            if written is not None:
                return written
        return _copy_insert(conn, table, columns, rows, keys, update, returning)
    return bulk_insert(conn, table, [dict(zip(columns, row, strict=True)) for row in rows], keys=keys,
                       update=update, returning=returning)


@contextmanager
def driver_errors(what: str) -> Iterator[None]:
    """Work on psycopg's own cursor raises psycopg's errors, which SQLAlchemy never saw: they
    are raised as SQLAlchemy's (`DBAPIError` and its kinds), so a database outage or a
    deadlock there is retried by the callers like any other, not taken for a bug."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(what, None, exc, psycopg.Error) from exc


def _copy_insert(conn: Connection, table: Table, columns: list[str], rows: list[tuple[Any, ...]],
                 keys: list[str] | None, update: bool, returning: str | None) -> list[Any]:
    raw = conn.connection.driver_connection
    names = ", ".join(f'"{c}"' for c in columns)
    types = _copy_types(table, tuple(columns))
    with driver_errors(f"COPY {table.name}"), raw.cursor() as cur:
        if not keys and not returning:  # nothing to decide per row: straight into the table, in order
            _copy(cur, table.name, names, types, rows)
            return []
        temp = f"_bulk_{table.name}"
        # created once per session; emptied at each commit, and here in case of a second use in a transaction
        cur.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{temp}" ON COMMIT DELETE ROWS AS '
                    f'SELECT {", ".join(f"{table.name}.{chr(34)}{c}{chr(34)}" for c in table.c.keys())} '
                    f'FROM {table.name} WITH NO DATA; DELETE FROM "{temp}"')
        _copy(cur, f'"{temp}"', names, types, rows)
        conflict = ""
        if keys:
            target = ", ".join(f'"{k}"' for k in keys)
            if update:
                sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in columns if c not in keys)
                conflict = f"ON CONFLICT ({target}) DO UPDATE SET {sets}"
            else:
                conflict = f"ON CONFLICT ({target}) DO NOTHING"
        tail = f' RETURNING "{returning}"' if returning else ""
        cur.execute(f'INSERT INTO {table.name} ({names}) SELECT {names} FROM "{temp}" {conflict}{tail}')
        return [r[0] for r in cur.fetchall()] if returning else []


def _copy_unless_conflict(conn: Connection, table: Table, columns: list[str], rows: list[tuple[Any, ...]],
                          returning: str | None) -> list[Any] | None:
    """COPY `rows` straight into the table; None (and nothing written) if one conflicts with a
    unique key. Waits, as an INSERT would, for a transaction that is writing the same key."""
    from psycopg import errors

    raw = conn.connection.driver_connection
    names = ", ".join(f'"{c}"' for c in columns)
    with driver_errors(f"COPY {table.name}"), raw.cursor() as cur:
        cur.execute("SAVEPOINT _bulk_copy")
        try:
            _copy(cur, table.name, names, _copy_types(table, tuple(columns)), rows)
        except errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT _bulk_copy")
            return None
        cur.execute("RELEASE SAVEPOINT _bulk_copy")
    if returning is None:
        return []
    at = columns.index(returning)
    return [row[at] for row in rows]


INT4 = range(-2**31, 2**31)


def _copy(cur: Any, target: str, names: str, types: list[str], rows: list[tuple[Any, ...]]) -> None:
    # psycopg's binary int4 dumper wraps what does not fit (2**40 is stored as 0): refused here
    narrow = [i for i, kind in enumerate(types) if kind == "int4"]
    for row in rows if narrow else ():
        for i in narrow:
            if row[i] is not None and row[i] not in INT4:
                column = names.split(", ")[i].strip('"')
                raise ValueError(f"{target}.{column}: {row[i]} does not fit a 4-byte integer column")
    with cur.copy(f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        write = copy.write_row
        for row in rows:
            write(row)


@lru_cache(maxsize=256)
def _copy_types(table: Table, columns: tuple[str, ...]) -> list[str]:
    """The PostgreSQL type of each column, for a binary COPY. Times must be aware (UTC in
    storage is PostgreSQL's doing for timestamptz); a naive one is refused, as `UTCDateTime` does."""
    return [_pg_type(table.c[c].type) for c in columns]


def _pg_type(kind: Any) -> str:
    if isinstance(kind, UTCDateTime):
        return "timestamptz"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, BigInteger):
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    return "text"  # String, Text
