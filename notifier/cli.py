"""`notifier` command line: every process of the pipeline starts from here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from notifier.settings import SettingsError, load_settings
from notifier.store.migrate import DatabaseNotReady, first_line, shown_url


def _ctx(*, initialised: bool = True):
    """The composition root for a command; with `initialised`, refuse a database notifier has not
    set up (a missing SQLite file is not created, an empty database is not written to)."""
    from notifier.bootstrap import build
    from notifier.store.migrate import require_file, require_schema

    settings = load_settings()
    if initialised:
        require_file(settings.database_url)
    ctx = build(settings)
    if initialised:
        try:
            require_schema(ctx.store.engine)
        except BaseException:
            ctx.close()
            raise
    return ctx


def _require_database() -> None:
    """What `_ctx` refuses, checked before a long-running process (worker, beat) starts: without
    it, one started on a database `notifier init` has not set up says it is ready and fails on
    its first sweep or task. A database that cannot be reached now is an outage, not a mistake:
    the process starts all the same and waits for it, as it would once running. Builds nothing
    else (prometheus_client must not be imported before a worker's metrics are prepared)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from notifier.store.migrate import require_file, require_schema
    from notifier.store.sql import make_engine

    url = load_settings().database_url
    require_file(url)
    engine = make_engine(url)
    try:
        try:
            engine.connect().close()
        except (OperationalError, InterfaceError) as exc:
            click.echo(f"notifier: the database {shown_url(url)} cannot be reached now ({first_line(exc)}); "
                       "starting all the same, the sweeps and tasks wait for it", err=True)
            return
        require_schema(engine)
    finally:
        engine.dispose()


class _Commands(click.Group):
    """What a user can get wrong with the database ends in one line naming the cause and what to
    do, with exit status 1, never in a traceback (settings: `main` below, exit status 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DatabaseNotReady as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # a module that is not loaded cannot have raised: look only at those that are
            sql, redis, kombu = (sys.modules.get(m) for m in ("sqlalchemy.exc", "redis.exceptions", "kombu.exceptions"))
            if sql is not None and isinstance(exc, sql.OperationalError | sql.InterfaceError):
                # the connection was checked when the command started: this failed on the way
                raise click.ClickException(f"the database {shown_url(load_settings().database_url)} failed: "
                                           f"{first_line(exc)}") from None
            if (redis is not None and isinstance(exc, redis.ConnectionError)) or (
                    kombu is not None and isinstance(exc, kombu.OperationalError)):
                raise click.ClickException(f"cannot reach the broker: {first_line(exc)}. Is it running and "
                                           "reachable? NOTIFIER_EVENTS_URL and NOTIFIER_BROKER_URL say where it "
                                           "is") from None
            raise


@click.group(cls=_Commands)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default from settings).")
@click.option("--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True,
              help="JSON lines (for log collectors) or key=value for people; personal data masked in both (N7).")
def main(log_level: str | None, log_format: str) -> None:
    """notifier: plans, renders and sends the messages bookings need."""
    from notifier.observability.logs import configure_logging

    try:
        settings = load_settings()
    except SettingsError as exc:  # every problem at once, each naming its variable; no traceback
        click.echo(f"notifier: cannot start: {len(exc.problems)} problem(s) with the settings", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        raise SystemExit(2) from None
    configure_logging(log_level or settings.log_level, fmt=log_format)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # Alembic's INFO lines say what `init` says
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _log_level_name() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())


def _keep_our_logging() -> None:
    """Celery configures logging only when nobody answers its setup_logging signal: we do."""
    from celery.signals import setup_logging

    setup_logging.connect(_logging_is_set_up, weak=False)


def _logging_is_set_up(**_: Any) -> None:
    pass


def _metrics_options(command):
    command = click.option("--metrics-host", default="127.0.0.1", show_default=True,
                           help="Address of the Prometheus endpoint (0.0.0.0 in containers).")(command)
    return click.option("--metrics-port", type=int, default=None,
                        help="Serve Prometheus metrics on this port (/metrics); off when not given.")(command)


def _migrate(ctx) -> None:
    """Migrate and say what ran (Alembic's own lines stay in the logs at DEBUG)."""
    from notifier.store.migrate import upgrade_report

    before, applied = upgrade_report(ctx.store.engine)
    where = shown_url(ctx.settings.database_url)
    if not applied:
        click.echo(f"database {where}: schema up to date (revision {before}), nothing to migrate")
        return
    start = f"from revision {before}" if before else "from an empty database"
    click.echo(f"database {where}: applied {len(applied)} migration{'s' if len(applied) != 1 else ''} {start}:")
    for line in applied:
        click.echo(f"  {line}")


@main.command()
def migrate() -> None:
    """Bring the database schema to the newest version (Alembic)."""
    ctx = _ctx(initialised=False)
    try:
        _migrate(ctx)
    finally:
        ctx.close()


@main.command()
def init() -> None:
    """Migrate, then load the tenants from the tenants folder (config/tenants/*.yaml)."""
    ctx = _ctx(initialised=False)
    try:
        _migrate(ctx)
        folder = ctx.settings.tenants_dir
        loaded = _load_tenants(ctx, folder)
        ctx.warn_of_missing_providers()
    finally:
        ctx.close()
    click.echo(f"tenants from {folder}: {', '.join(loaded) or 'none (no *.yaml there)'}")


@main.group()
def tenants() -> None:
    """Tenants and their resources."""


@tenants.command("load")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def tenants_load(folder: Path) -> None:
    """Create or update tenants from FOLDER/*.yaml (a file with a problem loads nothing: exit 1)."""
    click.echo(", ".join(_load_tenants(_ctx(), folder)))


def _load_tenants(ctx: Any, folder: Path) -> list[str]:
    """The valid files are loaded; each problem of the others is printed (file, key, reason): exit 1."""
    from notifier.services import TenantFilesInvalid, load_tenants

    try:
        return load_tenants(ctx.store, folder, now=ctx.clock.now())
    except TenantFilesInvalid as exc:
        if exc.loaded:
            click.echo(f"loaded: {', '.join(exc.loaded)}")
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None


@main.command()
@click.option("--idle-exit", type=float, default=None, help="Exit after this many seconds without events.")
@_metrics_options
def ingest(idle_exit: float | None, metrics_port: int | None, metrics_host: str) -> None:
    """Consume booking events from the broker and apply them (runs until stopped)."""
    from notifier import ingest as ingester
    from notifier.observability.logs import mask_text

    ctx = _ctx()
    ctx.warn_of_missing_providers()
    source = ingester.open_source(ctx.settings)
    on_batch = None
    if metrics_port is not None:
        from notifier.observability import metrics

        metrics.serve(metrics_port, metrics_host)
        source, on_batch = metrics.MeteredSource(source), metrics.count_ingested
    logging.getLogger("notifier.ingest").info("ingesting from %s", source.name)
    ingester.tune_gc()
    try:
        total = ingester.run(ctx, source, stop=ingester.stop_on_signals(), idle_exit_s=idle_exit, on_batch=on_batch)
    finally:
        source.close()
        ctx.close()
    summary = vars(total) | {"dead_reasons": total.dead_reasons[:20],  # the counts keyed (reason, kind): as text
                             "not_planned": {"/".join(key): n for key, n in getattr(total, "not_planned", {}).items()}}
    click.echo(mask_text(json.dumps(summary)))


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--url", default=None, help="Broker URL (default: events_url from settings).")
@click.option("--producer", default=None, help="Publish as this bound booking system (its list or routing keys).")
def publish(source, url: str | None, producer: str | None) -> None:
    """Publish events from a file (JSON object, JSON array, or one JSON object per line) or stdin."""
    from notifier.client import publish as do_publish

    raw = source.read()
    text = raw.decode("utf-8").strip()
    if text.startswith("["):
        events = [json.dumps(e) for e in json.loads(text)]
    elif "\n" in text:
        events = [line for line in text.splitlines() if line.strip()]
    else:
        events = [text]
    click.echo(f"published {do_publish(events, url=url, producer=producer)} events")


@main.group()
def producers() -> None:
    """Booking systems bound to tenants (setting `producers`; docs/security.md)."""


@producers.command("grants")
@click.option("--user-prefix", default="", help="Broker user names: PREFIX + producer name.")
def producers_grants(user_prefix: str) -> None:
    """Print what each producer's broker user needs: a Redis ACL line, or rabbitmqctl commands."""
    from notifier.producers import producer_queue, rabbitmq_grants, redis_acl_rules

    s = load_settings()
    bindings = s.producer_bindings
    if not bindings:
        raise click.ClickException("no producers are bound: set producers = \"name=tenant[,tenant]; ...\"")
    redis = s.events_url.startswith(("redis://", "rediss://", "unix://"))
    for name, tenants in bindings.items():
        user = f"{user_prefix}{name}"
        click.echo(f"# {name}: tenants {', '.join(sorted(tenants))}; publishes "
                   + (f"to the list {producer_queue(s.events_queue, name)}" if redis
                      else f"with routing keys {name}.<type> on {s.events_exchange}"))
        if redis:
            click.echo(f"ACL SETUSER {user} on >PASSWORD {' '.join(redis_acl_rules(s.events_queue, name))}")
        else:
            click.echo(f"rabbitmqctl add_user {user} PASSWORD")
            for grant in rabbitmq_grants(s.events_url, s.events_exchange, name, user):
                click.echo("rabbitmqctl " + " ".join(f"'{word}'" if any(c in word for c in "^$\\*") else word
                                                     for word in grant))


@main.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", "-c", type=int, default=None)
@click.option("--pool", "-P", default=None, help="prefork (default), threads, solo.")
@click.option("--hostname", "-n", default=None)
@click.option("--events/--no-events", default=True, show_default=True,
              help="Send task events (Flower's task views; ids only in them, N7).")
@_metrics_options
def worker(queues: str | None, concurrency: int | None, pool: str | None, hostname: str | None, events: bool,
           metrics_port: int | None, metrics_host: str) -> None:
    """Run a Celery worker (sweep and dispatch queues)."""
    from tasks.celery_app import ALL_QUEUES

    wanted = [name.strip() for name in (queues or ",".join(ALL_QUEUES)).split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ALL_QUEUES]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown queue{'s' if len(unknown) > 1 else ''} {', '.join(unknown) or '(none)'}: "
                                 f"the queues are {', '.join(ALL_QUEUES)}", param_hint="'-Q' / '--queues'")
    _require_database()
    if metrics_port is not None:  # before prometheus_client is imported: the pool's children share a folder
        from notifier.observability import metrics

        metrics.prepare_multiprocess()
        metrics.serve(metrics_port, metrics_host, multiprocess=True)
        metrics.connect_worker_signals()
    _keep_our_logging()
    from notifier.observability.logs import quiet_idle_sweeps
    from tasks.celery_app import app

    quiet_idle_sweeps()  # an idle sweep is a DEBUG line, not two INFO lines every two seconds
    argv = ["--quiet", "worker", "-Q", ",".join(wanted), "--without-gossip", "--without-mingle",
            "--loglevel", _log_level_name()]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if pool:
        argv += ["-P", pool]
    if hostname:
        argv += ["-n", hostname]
    if events:
        argv += ["--task-events"]
    app.worker_main(argv)


@main.command()
@_metrics_options
def beat(metrics_port: int | None, metrics_host: str) -> None:
    """Run Celery beat: the due and state sweeps every sweep_interval_s, housekeeping every
    housekeeping_interval_s. One is enough; a second (by mistake, or for availability) is harmless."""
    _require_database()
    if metrics_port is not None:
        from notifier.observability import metrics

        metrics.serve(metrics_port, metrics_host)
        metrics.connect_beat_signals()
    _keep_our_logging()
    from tasks.celery_app import app

    app.start(["--quiet", "beat", "--loglevel", _log_level_name()])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", default=5555, type=int, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 in a container, behind authentication).")
@click.argument("flower_options", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, flower_options: tuple[str, ...]) -> None:
    """Run Flower (queues, workers, tasks; Prometheus metrics on /metrics) against the project's broker.
    Flower's own options pass through: --basic-auth=user:password, --auth=..., --url-prefix=... Flower
    has no authentication of its own by default: protect it before it listens beyond loopback
    (docs/security.md)."""
    _keep_our_logging()
    from tasks.celery_app import app

    app.start(["flower", f"--port={port}", f"--address={address}", *flower_options])


@main.command()
@click.argument("url")
@click.option("--timeout", "timeout_s", type=float, default=3.0, show_default=True)
def health(url: str, timeout_s: float) -> None:
    """Exit 0 when URL answers 2xx within the timeout, else 1 (container health checks)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310 - an operator's URL
            status = answer.status
    except (OSError, urllib.error.URLError) as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        raise SystemExit(1) from None
    if not 200 <= status < 300:
        click.echo(f"unhealthy: HTTP {status}", err=True)
        raise SystemExit(1)
    click.echo("ok")


@main.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
def web(host: str, port: int) -> None:
    """Run the web app: provider callbacks and the JSON API (uvicorn)."""
    import uvicorn

    from notifier.web.app import create_app

    uvicorn.run(create_app(_ctx()), host=host, port=port, log_level="warning",
                log_config=None)  # uvicorn's loggers go through ours: JSON, masked (N7)


@main.command()
def sweep() -> None:
    """Run one state sweep and one due sweep now, dispatching in this process (operations, debugging)."""
    from notifier.dispatch import DispatchReport, dispatch_batch
    from notifier.services import max_claims, sweep_due, sweep_states

    ctx = _ctx()
    s = ctx.settings
    sweep_states(ctx.store, now=ctx.clock.now(), regions=ctx.unavailable)
    total = vars(DispatchReport())
    for _channel, ids in sweep_due(ctx.store, now=ctx.clock.now(), lease_s=s.lease_s, limit=s.sweep_batch,
                                   batch=s.dispatch_batch, max_claims=max_claims(s)):
        for key, value in vars(dispatch_batch(ctx, ids)).items():
            total[key] += value
    click.echo(json.dumps(total))


@main.command()
@click.argument("tenant_id")
@click.argument("booking_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, times in UTC (for machines).")
def timeline(tenant_id: str, booking_id: str, as_json: bool) -> None:
    """Print a booking's timeline: a table in the tenant's local time (JSON lines with --json).
    Exits 1 when the tenant or the booking is unknown."""
    from zoneinfo import ZoneInfo

    from notifier.services import timeline_of
    from notifier.views import timeline_lines

    ctx = _ctx()
    try:
        with ctx.store.transaction() as tx:
            tenant = tx.tenant(tenant_id)
            booking = tx.booking(tenant_id, booking_id) if tenant else None
        entries = timeline_of(ctx.store, tenant_id, booking_id) if tenant else []
    finally:
        ctx.close()
    if tenant is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r} (`notifier init` or `notifier tenants load` "
                                   "loads tenants)")
    if booking is None and not entries:
        raise click.ClickException(f"no booking {booking_id!r} for tenant {tenant_id!r}")
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))
        return
    click.echo(f"{tenant_id} / {booking_id} (times in {tenant.timezone})")
    for line in timeline_lines(entries, ZoneInfo(tenant.timezone)):
        click.echo(f"  {line}")


@main.group()
def booking() -> None:
    """One booking as it stands."""


@booking.command("show")
@click.argument("tenant_id")
@click.argument("booking_id")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON (GET /api/tenants/T/bookings/B).")
def booking_show(tenant_id: str, booking_id: str, as_json: bool) -> None:
    """Status, markers, status history (newest first), messages and what was not planned, and why."""
    from notifier.views import booking_view

    ctx = _ctx()
    found = booking_view(ctx.store, tenant_id, booking_id, now=ctx.clock.now(), regions=ctx.unavailable)
    if found is None:
        raise click.ClickException(f"no booking {booking_id!r} for tenant {tenant_id!r}")
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    for line in describe_booking(found):
        click.echo(line)


def describe_booking(view: dict[str, Any]) -> list[str]:
    """`booking_view` for a person, times in the tenant's zone."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(view["timezone"] or "UTC")

    def local(moment: Any) -> str:
        if not moment:
            return "-"
        value = moment if isinstance(moment, datetime) else datetime.fromisoformat(str(moment))
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M")

    workflow = view["workflow_status"]
    status = view["status"] + (f", {workflow['name']} ({workflow['kind']})" if workflow else "")
    if view["cancelled_by"]:
        status += f", cancelled by {view['cancelled_by']}" + (f": {view['cancel_reason']}" if view["cancel_reason"]
                                                               else "")
    lines = [f"booking {view['booking_id']} of {view['tenant_id']}: {status}",
             f"  visit     {local(view['starts_at'])} - {local(view['ends_at'])[-5:]} ({zone.key}), "
             f"resource {view['resource_id']}, customer {view['customer_id']}",
             f"  confirmed {local(view['confirmed_at'])}   visit marked {view['visit_outcome'] or '-'}"]
    markers = view["markers"]
    lit = [name.removesuffix("_since").removesuffix("_at") + " since " + local(markers[name])
           for name in ("red_since", "late_since", "late_counter_since", "released_at") if markers[name]]
    lines.append("  markers   " + ", ".join((["unconfirmed"] if markers["unconfirmed"] else []) + lit or ["none"]))
    if view["status_history"]:
        lines.append("status history (newest first):")
        lines += [f"  {local(e['at'])}  {e['status']} ({e['kind']})" + (f": {e['reason']}" if e["reason"] else "")
                  for e in view["status_history"]]
    lines.append("messages:" if view["messages"] else "messages: none")
    for m in view["messages"]:
        note = f"  ({m['error']})" if m["error"] else ""
        lines.append(f"  {local(m['due_at'])}  {m['kind']:<20} {m['channel'] or '?':<9} {m['state']:<10}"
                     f"{'  sent ' + local(m['sent_at']) if m['sent_at'] else ''}{note}")
    if view["not_planned"]:
        lines.append("not planned:")
    for n in view["not_planned"]:
        channels = ", ".join(f"{c}: {why}" for c, why in n["channel_reasons"].items()) if n.get("channel_reasons") \
            else ", ".join(n["channels"])
        lines.append(f"  {n['reason']}: {', '.join(n['kinds'])} ({channels})")
    return lines


@main.group()
def templates() -> None:
    """Template bundles: check them before they go live."""


@templates.command("validate")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tenants", "tenants_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Check company details against these tenants (default: the configured ones).")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def templates_validate(path: Path, tenants_dir: Path | None, as_json: bool) -> None:
    """Check a bundle: syntax, variables, parts, coverage, company details, SMS length. A kind the
    bundle has no template of at all (one added after it was written) uses the shipped default:
    a note, not an error."""
    import yaml

    from notifier.domain.model import Channel, Tenant
    from notifier.rendering.bundles import MAX_SMS_SEGMENTS, SmsSize, shipped_defaults, validate_bundle
    from notifier.rendering.bundles import as_json as problems_json

    folder = tenants_dir or load_settings().tenants_dir
    tenants = []
    for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        tenants.append(Tenant(id=doc["id"], name=doc.get("name", doc["id"]), company=doc.get("company", {}),
                              channels=frozenset(Channel(c) for c in doc.get("channels", ["email"]))))
    sms_sizes: dict[str, SmsSize] = {}
    settings = load_settings()
    problems = validate_bundle(path, tenants=tenants, public_url=settings.public_url, sms_sizes=sms_sizes,
                               shipped=settings.templates_dir)
    errors = [p for p in problems if p.severity == "error"]
    defaults = shipped_defaults(problems)
    if as_json:
        click.echo(json.dumps({"ok": not errors, "problems": problems_json(problems),
                               "sms": {name: size._asdict() for name, size in sorted(sms_sizes.items())},
                               "shipped_defaults": defaults}, indent=2))
    else:
        for problem in problems:
            click.echo(str(problem), err=True)
        if sms_sizes:
            name, size = max(sms_sizes.items(), key=lambda item: (item[1].segments, item[1].characters))
            within = sum(s.segments <= MAX_SMS_SEGMENTS for s in sms_sizes.values())
            click.echo(f"SMS: {within} of {len(sms_sizes)} templates within {MAX_SMS_SEGMENTS} segments with the "
                       f"sample booking and its link; the longest {name} ({size.characters} characters, "
                       f"{size.encoding}, {size.segments} segments)")
        warnings = sum(p.severity == "warning" for p in problems)
        click.echo(f"{path}: {len(errors)} errors, {warnings} warnings"
                   + (f"; from the shipped defaults: {', '.join(defaults)}" if defaults else ""))
    if errors:
        raise SystemExit(1)


@templates.command("load")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tenant", "tenant_id", required=True)
def templates_load(path: Path, tenant_id: str) -> None:
    """Validate a bundle against the tenant and make it the tenant's active bundle (R40). A kind
    the bundle has no template of at all uses the shipped default (said as a note)."""
    from notifier.rendering.bundles import read_bundle, shipped_defaults, validate_bundle

    ctx = _ctx()
    with ctx.store.transaction() as tx:
        tenant = tx.tenant(tenant_id)
    if tenant is None:
        raise click.ClickException(f"unknown tenant {tenant_id!r}")
    found = validate_bundle(path, tenants=[tenant], public_url=ctx.settings.public_url,
                            shipped=ctx.settings.templates_dir)
    problems = [p for p in found if p.severity == "error"]
    if problems:
        for problem in problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(problems)} errors: nothing loaded, the active bundle stays")
    bundle = read_bundle(path)
    with ctx.store.transaction() as tx:
        tx.save_bundle(tenant_id, bundle, ctx.clock.now())
    for note in (p for p in found if p.severity == "note"):
        click.echo(str(note), err=True)
    defaults = shipped_defaults(found)
    click.echo(f"{tenant_id}: bundle {bundle.name} version {bundle.version} is active"
               + (f"; from the shipped defaults: {', '.join(defaults)}" if defaults else ""))


@templates.command("samples")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/samples"))
def templates_samples(path: Path | None, out: Path) -> None:
    """Render every kind in every language to OUT/<language>.md for people to read."""
    from notifier.rendering.environment import Renderer
    from notifier.rendering.samples import NAMES, render_samples

    renderer = Renderer(path or load_settings().templates_dir)
    out.mkdir(parents=True, exist_ok=True)
    for language in NAMES:
        (out / f"{language}.md").write_text(render_samples(renderer, language), encoding="utf-8")
    click.echo(f"wrote {', '.join(f'{out}/{lang}.md' for lang in NAMES)}")


@templates.command("preview")
@click.option("--tenant", "tenant_id", required=True, help="Its active bundle and company details.")
@click.option("--kind", required=True, help="reminder, confirmation, info, ... (docs/templates.md).")
@click.option("--channel", required=True, help="email, sms, whatsapp, staff, activity.")
@click.option("--language", default=None, help="de, it, ru, en (default: the booking's customer's, else the tenant's).")
@click.option("--resource-type", default=None, help="specialist or equipment (default: the booking's resource's).")
@click.option("--booking", "booking_id", default=None, help="Render with this booking's data (default: the samples).")
@click.option("--send-to", default=None, help="Also send it now, as a test, to this email address or phone number.")
@click.option("--by", default=None, help="Who sends the test, for the booking's timeline (default: cli:<user>).")
def templates_preview(tenant_id: str, kind: str, channel: str, language: str | None, resource_type: str | None,
                      booking_id: str | None, send_to: str | None, by: str | None) -> None:
    """Show a message as it would be rendered now (subject, text, HTML; an SMS's segments); the
    customer's link is a placeholder of its length. With --send-to, send it as a test."""
    from notifier.operations import PreviewRequest, preview_template, send_test

    ctx = _ctx()
    request = PreviewRequest(tenant_id=tenant_id, kind=kind, channel=channel, language=language,
                             resource_type=resource_type, booking_id=booking_id)
    actor = _cli_actor(by)
    with _refusals():
        out = preview_template(ctx, request, actor=actor)
        click.echo(f"{out.template} ({out.language}, {out.resource_type}; {out.source})")
        for note in out.notes:
            click.echo(f"note: {note}")
        if out.subject:
            click.echo(f"Subject: {out.subject}")
        if out.sms:
            click.echo(f"SMS: {out.sms[2]} characters, {out.sms[0]}, {out.sms[1]} segment{'s' * (out.sms[1] != 1)}")
        if out.whatsapp:
            click.echo(f"WhatsApp template {out.whatsapp[0]} ({out.whatsapp[1]}): {list(out.whatsapp[2])}")
        if out.card:
            click.echo(out.card)
        click.echo("")
        click.echo(out.text)
        if out.html:
            click.echo("\n--- HTML ---")
            click.echo(out.html)
        if send_to:
            provider_id = send_test(ctx, request, send_to, actor=actor, now=ctx.clock.now())
            click.echo(f"\ntest sent ({provider_id})")


def _cli_actor(by: str | None):
    """Who acts from the command line: --by, else cli:<the OS user> (on the booking's timeline)."""
    import getpass

    from notifier.operations import Actor

    return Actor(by or f"cli:{getpass.getuser()}")


class _refusals:
    """What an operator's action cannot do ends in one line and exit status 1."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, _tb: Any) -> bool:
        from notifier.operations import NotAllowed, NotFound, Refused

        if isinstance(exc, (NotFound, NotAllowed, Refused)):
            raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None
        return False


@main.group()
def messages() -> None:
    """Find messages, send a failed one again, withdraw a planned one (each on its booking's timeline)."""


def _when(value: str | None, *, end: bool) -> Any:
    """An ISO date (a whole day: --to includes it) or an ISO time with its offset, as UTC."""
    from datetime import UTC, date, datetime, time, timedelta

    if not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(), tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected YYYY-MM-DD or an ISO time with its offset") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r}: give the offset (+01:00) or Z")
    return moment.astimezone(UTC)


@messages.command("search")
@click.option("--tenant", "tenant_id", default=None)
@click.option("--booking", "booking_id", default=None)
@click.option("--phone", default=None, help="The customer's number (their SMS and WhatsApp messages).")
@click.option("--email", default=None, help="The customer's address (their emails).")
@click.option("--channel", default=None)
@click.option("--status", "state", default=None, help="planned, queued, sending, sent, delivered, read, failed, withdrawn.")
@click.option("--from", "due_from", default=None, help="Due on or after: YYYY-MM-DD (UTC) or an ISO time.")
@click.option("--to", "due_to", default=None, help="Due before, or on that day: YYYY-MM-DD (UTC) or an ISO time.")
@click.option("--limit", default=50, type=click.IntRange(1, 200), show_default=True)
@click.option("--before", "before_id", default=None, type=int, help="The next page: ids below this one.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def messages_search(tenant_id: str | None, booking_id: str | None, phone: str | None, email: str | None,
                    channel: str | None, state: str | None, due_from: str | None, due_to: str | None, limit: int,
                    before_id: int | None, as_json: bool) -> None:
    """Messages matching every filter given, newest first."""
    from notifier.operations import Actor, MessageQuery, search_messages

    ctx = _ctx()
    query = MessageQuery(tenant_id=tenant_id, booking_id=booking_id, phone=phone, email=email, channel=channel,
                         state=state, due_from=_when(due_from, end=False), due_to=_when(due_to, end=True),
                         before_id=before_id, limit=limit)
    with _refusals():
        found = search_messages(ctx.store, query, actor=Actor("cli"))
    for row in found:
        if as_json:
            click.echo(json.dumps(row, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))
            continue
        due = row["due_at"].strftime("%Y-%m-%d %H:%M") if row["due_at"] else "-"
        extra = f"  {row['error']}" if row["error"] else ""
        click.echo(f"{row['id']:>8}  {due} UTC  {row['tenant_id']}/{row['booking_id']}  {row['kind']:<20} "
                   f"{row['channel']:<8} {row['state']:<9}{extra}")
    if not as_json:
        click.echo(f"{len(found)} message{'s' * (len(found) != 1)}" +
                   (f"; more with --before {found[-1]['id']}" if len(found) == limit else ""))


@messages.command("resend")
@click.argument("message_id", type=int)
@click.option("--channel", default=None, help="Another channel the customer may be reached on (default: the same).")
@click.option("--by", default=None, help="Who asks, for the booking's timeline (default: cli:<user>).")
def messages_resend(message_id: int, channel: str | None, by: str | None) -> None:
    """Send failed message MESSAGE_ID again: a new message, due now (the next sweep sends it)."""
    from notifier.operations import resend_message

    ctx = _ctx()
    with _refusals():
        new_id = resend_message(ctx.store, message_id, actor=_cli_actor(by), now=ctx.clock.now(), channel=channel)
    click.echo(f"message {message_id} will be sent again as message {new_id}")


@messages.command("withdraw")
@click.argument("message_id", type=int)
@click.option("--reason", default="", help="Why, for the booking's timeline and the booking system.")
@click.option("--by", default=None, help="Who asks, for the booking's timeline (default: cli:<user>).")
def messages_withdraw(message_id: int, reason: str, by: str | None) -> None:
    """Withdraw planned message MESSAGE_ID: it will not be sent, and planning will not bring it back."""
    from notifier.operations import withdraw_message

    ctx = _ctx()
    with _refusals():
        withdraw_message(ctx.store, message_id, actor=_cli_actor(by), now=ctx.clock.now(), reason=reason)
    click.echo(f"message {message_id} withdrawn")


@main.group()
def keys() -> None:
    """API keys: a tenant's reads that tenant's /api routes; an operator's reads all (docs/security.md)."""


@keys.command("create")
@click.option("--tenant", "tenant_id", default=None, help="The tenant whose data the key may read.")
@click.option("--operator", is_flag=True, help="A key for every tenant and the cross-tenant routes (dead letters).")
@click.option("--name", default="", help="What the key is for (shown by `keys list`).")
def keys_create(tenant_id: str | None, operator: bool, name: str) -> None:
    """Make a key and print it once (stdout); only its hash is stored."""
    from notifier.access import create_key

    if operator == (tenant_id is not None):
        raise click.UsageError("give either --tenant TENANT or --operator")
    ctx = _ctx()
    try:
        issued = create_key(ctx.store, tenant_id=tenant_id, name=name, now=ctx.clock.now())
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    who = f"tenant {tenant_id}" if tenant_id else "the operator"
    click.echo(f"{issued.id} for {who}: keep the key now, it is not shown again "
               "(send it as Authorization: Bearer <key>)", err=True)
    click.echo(issued.key)


@keys.command("list")
def keys_list() -> None:
    """Every key: id, tenant (or operator), name, created, revoked."""
    from notifier.access import list_keys

    for row in list_keys(_ctx().store):
        click.echo(json.dumps({"id": row["id"], "tenant": row["tenant_id"] or "(operator)", "name": row["name"],
                               "created_at": row["created_at"].isoformat(),
                               "revoked_at": row["revoked_at"].isoformat() if row["revoked_at"] else None}))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke key KEY_ID (from `keys list`): refused from the next request on."""
    from notifier.access import revoke_key

    ctx = _ctx()
    if not revoke_key(ctx.store, key_id, now=ctx.clock.now()):
        raise click.ClickException(f"no live key {key_id!r}")
    click.echo(f"{key_id} revoked")


@main.group()
def dlq() -> None:
    """The dead-letter store: events that could not be applied, with the reason."""


@dlq.command("list")
@click.option("--limit", default=50, type=int)
def dlq_list(limit: int) -> None:
    from sqlalchemy import select

    from notifier.store.schema import dead_letters

    with _ctx().store.engine.connect() as conn:
        rows = conn.execute(select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit))
        for row in rows:
            click.echo(json.dumps({"id": row.id, "received_at": row.received_at.isoformat(), "source": row.source,
                                   "reason": row.reason, "body": row.body[:500], "body_bytes": row.body_bytes,
                                   "body_sha256": row.body_sha256,
                                   "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None}))


@dlq.command("replay")
@click.argument("dead_letter_id", type=int)
def dlq_replay(dead_letter_id: int) -> None:
    """Apply dead letter ID again (after fixing its cause); it stays listed, marked replayed, and
    the booking it applies to records the replay (cli:<user>)."""
    from notifier.operations import replay_dead_letter

    ctx = _ctx()
    try:
        report = replay_dead_letter(ctx.store, dead_letter_id, actor=_cli_actor(None), now=ctx.clock.now())
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(vars(report)))
    if report.dead:
        raise SystemExit(1)


@main.group()
def dev() -> None:
    """Tools for running notifier on a developer's machine."""


@dev.command("audit")
@click.option("--requirements", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("requirements.lock"), show_default=True)
@click.option("--service", type=click.Choice(["pypi", "osv"]), default="pypi", show_default=True,
              help="The vulnerability database pip-audit asks.")
def dev_audit(requirements: Path, service: str) -> None:
    """Check the pinned dependencies for known vulnerabilities (pip-audit). Exit 0: checked, none
    known; 1: vulnerable; 2: NOT CHECKED (the database could not be reached)."""
    from notifier.audit import audit

    verdict = audit(requirements, service=service)
    for line in verdict.lines:
        click.echo(line, err=verdict.status != 0)
    raise SystemExit(verdict.status)


@dev.command("smtp")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1025, type=int, show_default=True, help="SMTP port (0: any free port).")
@click.option("--web-port", type=int, default=None,
              help="Also serve the mails on this port as a web page (/ lists them, /mail/N shows one).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each mail to this folder as NNN.eml.")
def dev_smtp(host: str, port: int, web_port: int | None, save_dir: Path | None) -> None:
    """An SMTP sink: accepts every mail notifier sends and prints it (runs until Ctrl-C).
    Point the workers at it: NOTIFIER_SMTP_HOST=127.0.0.1 NOTIFIER_SMTP_PORT=1025."""
    import contextlib
    import signal
    import threading

    from notifier.devtools import MailPages, MailSink, mail_summary

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's line per connection
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    received = iter(range(1, 1_000_000))

    def show(message: Any) -> None:
        number = next(received)
        if save_dir is not None:
            (save_dir / f"{number:03d}.eml").write_bytes(message.as_bytes())
        click.echo(mail_summary(message))

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        sink = MailSink(host=host, port=port, on_message=show)
        sink.__enter__()
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    with contextlib.ExitStack() as stack:
        stack.callback(sink.__exit__, None, None, None)
        pages = stack.enter_context(MailPages(sink, host, web_port)) if web_port is not None else None
        click.echo(f"SMTP sink on {host}:{sink.port}: run notifier with NOTIFIER_SMTP_HOST={host} "
                   f"NOTIFIER_SMTP_PORT={sink.port}" + (f"; the mails on {pages.url}" if pages else "")
                   + (f"; saved in {save_dir}" if save_dir else "") + " (Ctrl-C stops)")
        stop.wait()
    click.echo(f"received {next(received) - 1} mails")


@main.command()
@click.option("--keep/--no-keep", default=True, show_default=True,
              help="Keep the demo's folder (database, logs, mails) afterwards; a new run replaces it.")
def demo(keep: bool) -> None:
    """Run the whole pipeline on the embedded default (SQLite, embedded broker) for a day."""
    from notifier.demo import run_demo

    sys.exit(run_demo(keep=keep))


if __name__ == "__main__":  # pragma: no cover
    main()
