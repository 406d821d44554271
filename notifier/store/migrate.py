"""Alembic, driven from code: `upgrade(engine)` brings any database to the newest schema."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Alembic and SQLAlchemy load when a migration or a check runs, not with the CLI
    from alembic.config import Config
    from sqlalchemy import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None, url: str | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


class DatabaseNotReady(RuntimeError):
    """The database is missing, empty or on another schema version: says what to run."""


def shown_url(url: str) -> str:
    """A database URL fit for a message: the password hidden."""
    from sqlalchemy import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as it is, it carries no password we know of
        return url


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def require_file(url: str) -> None:
    """Refuse an SQLite URL whose file does not exist (connecting would create an empty one)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise DatabaseNotReady(f"no database at {path.resolve()}: run `notifier init` to create it, or point "
                               "NOTIFIER_DATABASE_URL at an initialised one")


def first_line(exc: BaseException) -> str:
    """The first line of a database or broker error, the driver's own words (SQLAlchemy wraps
    them), without a closing full stop (the message goes on)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def revisions(engine: Engine) -> tuple[str | None, str]:
    """(the database's schema revision or None, the newest revision this code knows). A database
    that cannot be reached raises DatabaseNotReady saying so."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        conn = engine.connect()
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseNotReady(f"cannot connect to the database {engine.url.render_as_string(hide_password=True)}: "
                               f"{first_line(exc)}. Is it running and reachable? NOTIFIER_DATABASE_URL says where "
                               "it is") from None
    with conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, ScriptDirectory.from_config(alembic_config()).get_current_head()


def require_schema(engine: Engine) -> None:
    """Refuse a database without notifier's schema, or at another version than this code's."""
    from alembic.script import ScriptDirectory

    current, head = revisions(engine)
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise DatabaseNotReady(f"the database {where} has no notifier schema: run `notifier init` "
                               "(migrates it and loads the tenants)")
    if current != head:
        scripts = ScriptDirectory.from_config(alembic_config())
        if scripts.get_revision(current) is None:
            raise DatabaseNotReady(f"the database {where} is at schema {current}, newer than this "
                                   f"notifier knows ({head}): upgrade notifier")
        raise DatabaseNotReady(f"the database {where} is at schema {current}, this notifier needs "
                               f"{head}: run `notifier migrate`")


def upgrade_report(engine: Engine) -> tuple[str | None, list[str]]:
    """Upgrade to the newest schema and say what ran: (revision before, migrations applied, oldest first)."""
    from alembic.script import ScriptDirectory

    before, head = revisions(engine)
    scripts = ScriptDirectory.from_config(alembic_config())
    applied = [f"{rev.revision} {rev.doc}" for rev in reversed(list(scripts.walk_revisions(base=before or "base", head=head)))
               if rev.revision != before]
    upgrade(engine)
    return before, applied
