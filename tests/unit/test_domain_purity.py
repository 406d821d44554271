"""Acceptance (issue 2, point 3): the domain imports no Celery, SQLAlchemy, Jinja or network code."""

import ast
import json
import subprocess
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "notifier" / "domain"
FORBIDDEN = {"celery", "kombu", "sqlalchemy", "alembic", "psycopg", "jinja2", "redis", "requests", "urllib3",
             "httpx", "aiohttp", "smtplib", "http", "urllib", "socket", "ssl", "asyncio", "aiosmtpd",
             "babel", "notifier.store", "notifier.channels", "notifier.rendering", "tasks"}
# the standard library and three pure libraries; anything else must be argued for here first.
# email_validator checks an address's syntax as mail systems read it; the contract calls it with
# check_deliverability=False, so it never asks DNS (its resolver is imported only when asked to).
# email is the standard library's header model (a tenant's From mailbox, quoted as mail reads it),
# parsing only: sending lives in smtplib, forbidden above.
ALLOWED = {"__future__", "unicodedata", "dataclasses", "datetime", "enum", "typing", "zoneinfo", "collections", "functools",
           "itertools", "math", "operator", "re", "pydantic", "email_validator", "email", "notifier"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_domain_sources_import_only_pure_modules():
    for path in DOMAIN.glob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in ALLOWED, f"{path.name} imports {name}"
            assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path.name} imports {name}"
            if top == "notifier":
                assert name.startswith("notifier.domain"), f"{path.name} imports {name} outside the domain"


def test_importing_the_domain_loads_no_io_library():
    """At run time too: no I/O library sneaks in through a dependency. (The standard library's
    importlib.metadata pulls in email.utils and with it the socket module; that is not a use.)"""
    code = (
        "import sys, json, pkgutil, importlib, notifier.domain as d\n"
        "for m in pkgutil.iter_modules(d.__path__): importlib.import_module('notifier.domain.' + m.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    third_party_io = {"celery", "kombu", "sqlalchemy", "alembic", "psycopg", "jinja2", "redis", "requests",
                      "urllib3", "httpx", "aiohttp", "aiosmtpd", "smtplib", "http.client", "babel"}
    assert not third_party_io & set(loaded)
