"""Bulk writes: COPY on PostgreSQL, executemany elsewhere.

Row-by-row statements (even pipelined) cost a round of client-side work per row, and
multi-row VALUES statements cost psycopg a parse of the whole text every time. COPY into
a temporary table, then one INSERT ... SELECT with the conflict rule, costs neither.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]], *, keys: list[str] | None = None,
                update: bool = False, returning: str | None = None) -> list[Any]:
    """Insert `rows`; with `keys`, rows that conflict on them are skipped (or, with `update`,
    overwrite the other columns). Returns the `returning` column of the rows written."""
    if not rows:
        return []
    columns = list(rows[0])
    if conn.dialect.name == "postgresql":
        return _copy_insert(conn, table, columns, rows, keys, update, returning)
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


def _copy_insert(conn: Connection, table: Table, columns: list[str], rows: list[dict[str, Any]],
                 keys: list[str] | None, update: bool, returning: str | None) -> list[Any]:
    from psycopg.types.json import Json

    raw = conn.connection.driver_connection
    temp = f"_bulk_{table.name}"
    names = ", ".join(f'"{c}"' for c in columns)
    json_columns = {c for c in columns if isinstance(table.c[c].type, JSON)}
    converters = [_bind(table, c) for c in columns]
    with raw.cursor() as cur:
        if not keys and not returning:  # nothing to decide per row: straight into the table, in order
            with cur.copy(f'COPY {table.name} ({names}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row([Json(row[c]) if c in json_columns and row[c] is not None else convert(row[c])
                                    for c, convert in zip(columns, converters, strict=True)])
            return []
        cur.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{temp}" ON COMMIT DELETE ROWS AS '
                    f'SELECT {", ".join(f"{table.name}.{chr(34)}{c}{chr(34)}" for c in table.c.keys())} '
                    f'FROM {table.name} WITH NO DATA')
        with cur.copy(f'COPY "{temp}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([Json(row[c]) if c in json_columns and row[c] is not None else convert(row[c])
                                for c, convert in zip(columns, converters, strict=True)])
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
        written = [r[0] for r in cur.fetchall()] if returning else []
        cur.execute(f'TRUNCATE "{temp}"')
    return written


def _bind(table: Table, column: str):
    """The column type's own bind processing (e.g. UTC normalisation), without SQLAlchemy's compiler."""
    processor = table.c[column].type.bind_processor(postgresql.dialect(paramstyle="pyformat"))
    if processor is None or isinstance(table.c[column].type, JSON):
        return lambda value: value
    return processor
