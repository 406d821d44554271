"""Checking a template bundle before it goes live (R40-R42, N3).

`validate_bundle` reads every template of a bundle folder and reports, with file and line:
syntax errors, variables the rendering context does not have, parts an email or SMS must
define, kinds, channels and languages the settings need but the bundle lacks, company
details a template uses that a tenant has not filled in (R42), and SMS texts longer than
two segments (GSM-7 or UCS-2, whichever the text needs), the customer's link counted at its
real length.

Coverage: every kind needs a template per channel, language and resource type. A kind (or a
kind's channel) the bundle has no file of at all, such as one added after the bundle was
written, is rendered from the shipped default: a note, not an error, and the shipped
templates' company details are checked against the tenants like the bundle's own. A kind with
no shipped default, or one the bundle has for some languages or resource types only, is
missing: an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec
from jinja2 import TemplateSyntaxError, nodes

from notifier.domain.model import Channel, Kind, Tenant
from notifier.domain.replies import BUTTON_PAYLOADS
from notifier.links import TOKEN_CHARS
from notifier.rendering.checks import sandbox_problems
from notifier.rendering.environment import Renderer, TemplateMissing, kind_channels

LANGUAGES = ("de", "it", "ru", "en")
RESOURCE_TYPES = ("specialist", "equipment")
# the context a template may use (dispatch.template_context): top level and their keys
CONTEXT: dict[str, set[str]] = {
    "customer": {"name", "first_name", "language"},
    "company": set(),  # any detail; checked against each tenant's company instead (R42)
    "booking": {"id", "starts_at", "ends_at", "service", "duration_min", "cancel_reason", "cancelled_by", "status"},
    "resource": {"name", "type"},
    "links": {"page", "confirm", "cancel"},  # one page; `confirm` and `cancel` are older names for it
    "reply": {"text", "channel"},  # staff_reply (R1): the customer's message; empty in every other kind
}
# names Jinja itself gives a template: loops, blocks and macros (their attributes are checked too)
TEMPLATE_NAMES = frozenset({"loop", "self", "super", "caller", "varargs", "kwargs"})
MAX_SMS_SEGMENTS = 2
SAMPLE_PUBLIC_URL = "https://termine.example.de"  # a realistic length for the links an SMS carries
SAMPLE_REASON = "Die Behandlerin ist erkrankt; wir rufen Sie wegen eines neuen Termins an, versprochen"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None  # None: the file as a whole (missing, too long, a block it lacks)
    message: str
    severity: str = "error"  # or "warning", or "note" (what the bundle takes from the shipped defaults)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


class SmsSize(NamedTuple):
    """An SMS template as rendered with the sample booking, counted as a carrier counts it."""
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    characters: int


def channels_of(kind: Kind) -> tuple[str, ...]:
    if kind.value.startswith("activity_"):
        return (Channel.ACTIVITY.value,)
    if kind is Kind.STAFF_REPLY:  # a customer's message, forwarded to the booking system only
        return (Channel.STAFF.value,)
    if kind.to_staff:  # the booking system's webhook, and the staff's email (R1, R33)
        return (Channel.STAFF.value, Channel.EMAIL.value)
    return (Channel.EMAIL.value, Channel.SMS.value)


def sms_segments(text: str) -> tuple[str, int]:
    """("GSM-7" or "UCS-2", segments) as a carrier counts them (concatenated parts: 153 / 67)."""
    try:
        septets = len(text.encode("gsm03.38"))
        return "GSM-7", 1 if septets <= 160 else math.ceil(septets / 153)
    except UnicodeEncodeError:
        units = len(text.encode("utf-16-be")) // 2
        return "UCS-2", 1 if units <= 70 else math.ceil(units / 67)


def sample_link(public_url: str = SAMPLE_PUBLIC_URL) -> str:
    """A customer's link as long as a real one: the longer of `public_url` and the sample's
    address, and a token of full length (SMS budgets count it)."""
    base = max(public_url.rstrip("/"), SAMPLE_PUBLIC_URL, key=len)
    return f"{base}/l/{'x' * TOKEN_CHARS}"


def _sample_context(company: dict[str, str], link: str = "") -> dict[str, Any]:
    """Realistic lengths: a long name, resource and reason, so an SMS that fits here fits in
    practice (a reason may run to 500 characters: an SMS shortens it, `|truncate`)."""
    starts = datetime(2026, 9, 23, 14, 30, tzinfo=UTC)
    link = link or sample_link()
    return {
        "customer": {"name": "Maximiliane Musterfrau-Schmidt", "first_name": "Maximiliane", "language": "de"},
        "company": company,
        "booking": {"id": "B-100234", "starts_at": starts, "ends_at": starts.replace(hour=15), "service": "Beratung",
                    "duration_min": 30, "cancel_reason": SAMPLE_REASON, "cancelled_by": "staff", "status": ""},
        "resource": {"name": "Dr. Konstantin Weißenberger", "type": "specialist"},
        "links": {"page": link, "confirm": link, "cancel": link},
        "reply": {"text": "Kann ich statt 14:30 auch um 16 Uhr kommen? Ich bringe meine Tochter mit.",
                  "channel": "sms"}}


def _attribute_uses(tree: nodes.Template) -> Iterable[tuple[str, str | None, int]]:
    """(name, attribute or None, line) for every context variable the template reads
    (`booking.id` and `booking['id']` alike)."""
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name):
            yield node.node.name, node.attr, node.lineno
    for node in tree.find_all(nodes.Getitem):
        if isinstance(node.node, nodes.Name) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield node.node.name, node.arg.value, node.lineno
    for node in tree.find_all(nodes.Name):
        if node.ctx == "load":
            yield node.name, None, node.lineno


def company_fields_used(files: Mapping[str, str]) -> frozenset[str]:
    """The company details (R42) a bundle's templates read (`company.<name>`), by file contents."""
    env = Renderer(files={}, manifest={}).env
    used: set[str] = set()
    for name, source in files.items():
        if not name.endswith(".j2"):
            continue
        try:
            tree = env.parse(source, name=name)
        except TemplateSyntaxError:
            continue  # validation reports it; a bundle with it is not active
        used |= {attr for var, attr, _ in _attribute_uses(tree) if var == "company" and attr}
    return frozenset(used)


def _manifest(root: Path) -> dict[str, Any]:
    """bundle.yaml as a mapping, or {} when it is missing or unreadable (`_check_manifest` says why)."""
    import yaml

    try:
        manifest = yaml.safe_load((root / "bundle.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def validate_bundle(root: Path | str, *, tenants: Iterable[Tenant] = (), languages: Iterable[str] = LANGUAGES,
                    kinds: Iterable[Kind] = tuple(Kind), public_url: str = SAMPLE_PUBLIC_URL,
                    sms_sizes: dict[str, SmsSize] | None = None, shipped: Path | str | None = None
                    ) -> list[Problem]:
    """Every problem of the bundle at `root`, each with file and line. Never raises on a broken
    bundle: whatever is wrong with it is a problem in the list (N3). SMS lengths count the
    customer's link at `public_url` (or the sample's address, when that is longer); each SMS
    template's size as rendered is put in `sms_sizes` when one is given. `shipped` is the
    templates a kind the bundle has no file of falls back to (the settings' `templates_path`;
    default: the shipped `templates/`): each such kind is a note (`shipped_defaults`)."""
    root = Path(root)
    renderer = Renderer(root, manifest=_manifest(root))
    env = renderer.env
    problems: list[Problem] = []
    company_needs: dict[str, set[tuple[str, int]]] = {}
    files = sorted(p for p in root.rglob("*.j2") if p.is_file())
    if not files:
        return [Problem(str(root), None, "no templates (*.j2) in this folder")]
    inside = root.resolve()
    for path in files:
        name = str(path.relative_to(root))
        if not path.resolve().is_relative_to(inside):
            problems.append(Problem(name, None, "a link to a file outside the bundle"))
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(name, None, f"not UTF-8 text (byte {exc.start})"))
            continue
        try:
            tree = env.parse(source, name=name)
        except TemplateSyntaxError as exc:
            problems.append(Problem(name, exc.lineno or None, f"syntax error: {exc.message}"))
            continue
        for node in tree.find_all((nodes.Filter, nodes.Test)):  # Jinja finds these only when compiling
            what, known = ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
            if node.name not in known:
                problems.append(Problem(name, node.lineno, f"unknown {what} '{node.name}'"))
        problems.extend(Problem(name, line, message) for line, message in sandbox_problems(tree))
        assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
        for var, attr, line in _attribute_uses(tree):
            if var in assigned or var in TEMPLATE_NAMES:
                continue
            if var not in CONTEXT and var not in env.globals:
                problems.append(Problem(name, line, f"unknown variable '{var}' (the context has: "
                                                    f"{', '.join(sorted(CONTEXT))})"))
            elif var == "company" and attr is not None:
                company_needs.setdefault(name, set()).add((attr, line))
            elif attr is not None and CONTEXT.get(var) and attr not in CONTEXT[var]:
                problems.append(Problem(name, line, f"unknown variable '{var}.{attr}' ('{var}' has: "
                                                    f"{', '.join(sorted(CONTEXT[var]))})"))
        blocks = {b.name for b in tree.find_all(nodes.Block)}
        channel = path.name.rsplit(".", 2)[-2] if path.name.count(".") >= 2 else ""
        needed = {"email": {"subject", "text"}, "sms": {"text"}, "staff": {"subject", "text"},
                  "activity": {"subject", "text"}}.get(channel, {"text"})
        for block in sorted(needed - blocks):
            problems.append(Problem(name, None, f"missing block '{block}' (a {channel or 'message'} needs "
                                             f"{' and '.join(sorted(needed))})"))
        if not [p for p in problems if p.file == name]:
            problems.extend(_check_renders(renderer, name, path, channel, sample_link(public_url), sms_sizes))
    languages = tuple(languages)
    problems.extend(_check_coverage(root, languages, kinds, _shipped_renderer(root, shipped), company_needs,
                                    sample_link(public_url)))
    problems.extend(_check_manifest(root, renderer, languages, company_needs))
    problems.extend(_check_company(company_needs, tenants))
    return problems


def _check_manifest(root: Path, renderer: Renderer, languages: tuple[str, ...],
                    company_needs: dict[str, set[tuple[str, int]]]) -> list[Problem]:
    """bundle.yaml: WhatsApp entries name an approved template, its languages and exactly
    as many parameters as the provider approved (R44)."""
    import yaml

    path = root / "bundle.yaml"
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return [Problem("bundle.yaml", None, f"not UTF-8 text (byte {exc.start})")]
    try:
        manifest = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [Problem("bundle.yaml", mark.line + 1 if mark else None, f"invalid YAML: {exc}")]
    if not isinstance(manifest, dict):
        return [Problem("bundle.yaml", 1, f"must be a mapping (name:, whatsapp:), not {type(manifest).__name__}")]
    if not isinstance(manifest.get("whatsapp") or {}, dict):
        return [Problem("bundle.yaml", 1, "'whatsapp' must map message kinds to their approved templates")]
    lines = _whatsapp_entry_lines(text)
    own = manifest.get("whatsapp_for") or {}
    if not isinstance(own, dict):
        return [Problem("bundle.yaml", lines.get("whatsapp_for"), "'whatsapp_for' must map resource types "
                                                                  "(or resources/<id>) to their own templates")]
    sections = [("", manifest.get("whatsapp") or {})]
    problems = []
    for folder, entries in own.items():
        folder = str(folder)
        if folder not in RESOURCE_TYPES and not (folder.startswith("resources/") and folder.count("/") == 1):
            problems.append(Problem("bundle.yaml", lines.get(folder), f"whatsapp_for: '{folder}' is neither a "
                                    f"resource type ({', '.join(RESOURCE_TYPES)}) nor resources/<id>"))
        elif not isinstance(entries, dict):
            problems.append(Problem("bundle.yaml", lines.get(folder), f"whatsapp_for: '{folder}' must map message "
                                                                      f"kinds to their approved templates"))
        else:
            sections.append((folder, entries))
    for folder, entries in sections:
        for kind, entry in entries.items():
            problems += _check_whatsapp_entry(renderer, str(kind), entry, lines.get(f"{folder}/{kind}".lstrip("/")),
                                              languages, company_needs)
    return problems


def _check_whatsapp_entry(renderer: Renderer, kind: str, entry: Any, line: int | None, languages: tuple[str, ...],
                          company_needs: dict[str, set[tuple[str, int]]]) -> list[Problem]:
    """One approved template of bundle.yaml: a known kind, a name, its languages, its parameters."""
    problems = []
    customer_kinds = {k.value for k in Kind if not k.to_staff}
    if kind not in customer_kinds:
        problems.append(Problem("bundle.yaml", line, f"WhatsApp entry for unknown customer kind '{kind}'"))
        return problems
    if not isinstance(entry, dict) or not entry.get("template"):
        problems.append(Problem("bundle.yaml", line, f"WhatsApp entry '{kind}' names no approved template"))
        return problems
    params = entry.get("params") or []
    approved = entry.get("param_count")
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        problems.append(Problem("bundle.yaml", line, f"WhatsApp template {entry['template']} ({kind}): "
                                                     f"'params' must be a list of expressions"))
        return problems
    if not isinstance(entry.get("languages") or {}, dict):
        problems.append(Problem("bundle.yaml", line, f"WhatsApp template {entry['template']} ({kind}): "
                                                     f"'languages' must map our languages to the provider's"))
        return problems
    if not isinstance(approved, int) or isinstance(approved, bool):
        problems.append(Problem("bundle.yaml", line, f"WhatsApp template {entry['template']} ({kind}): "
                                                     f"'param_count' must be a whole number, not {approved!r}"))
    elif approved != len(params):
        problems.append(Problem("bundle.yaml", line, f"WhatsApp template {entry['template']} ({kind}) was "
                                                     f"approved with {approved} parameters, the bundle gives "
                                                     f"{len(params)}"))
    buttons = entry.get("buttons") or []
    if not isinstance(buttons, list) or not set(buttons) <= set(BUTTON_PAYLOADS) or len(set(buttons)) < len(buttons):
        problems.append(Problem("bundle.yaml", line, f"WhatsApp template {entry['template']} ({kind}): "
                                                     f"'buttons' must list each of {', '.join(BUTTON_PAYLOADS)} "
                                                     f"at most once, not {buttons!r}"))
    for expression in params:
        try:
            tree = renderer.env.parse("{{ " + str(expression) + " }}")
        except TemplateSyntaxError as exc:
            problems.append(Problem("bundle.yaml", line, f"WhatsApp parameter '{expression}': {exc.message}"))
            continue
        problems.extend(Problem("bundle.yaml", line, f"WhatsApp parameter '{expression}': {message}")
                        for _, message in sandbox_problems(tree))
        for var, attr, _ in _attribute_uses(tree):
            if var not in CONTEXT:
                problems.append(Problem("bundle.yaml", line, f"WhatsApp parameter '{expression}': unknown "
                                                             f"variable '{var}'"))
            elif var == "company" and attr:
                company_needs.setdefault("bundle.yaml", set()).add((attr, line))
            elif attr and CONTEXT[var] and attr not in CONTEXT[var]:
                problems.append(Problem("bundle.yaml", line, f"WhatsApp parameter '{expression}': unknown "
                                                             f"variable '{var}.{attr}'"))
    missing = [lang for lang in languages if lang not in (entry.get("languages") or {})]
    if missing:
        problems.append(Problem("bundle.yaml", line, f"WhatsApp template {entry['template']} has no "
                                                     f"language {', '.join(missing)}"))
    return problems


@dataclass(frozen=True)
class Bundle:
    """A bundle as loaded by an admin: its manifest, its files, and a version naming its content."""

    name: str
    version: str
    manifest: dict[str, Any]
    files: dict[str, str]


def read_bundle(root: Path | str) -> Bundle:
    import hashlib

    import yaml

    root = Path(root)
    files = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.j2"))}
    manifest_text = (root / "bundle.yaml").read_text(encoding="utf-8") if (root / "bundle.yaml").is_file() else ""
    manifest = yaml.safe_load(manifest_text) or {} if manifest_text else {}
    digest = hashlib.sha256(manifest_text.encode())
    for name, source in files.items():
        digest.update(name.encode() + b"\0" + source.encode() + b"\0")
    return Bundle(name=str(manifest.get("name") or root.name), version=digest.hexdigest()[:12], manifest=manifest,
                  files=files)


def _check_renders(renderer: Renderer, name: str, path: Path, channel: str, link: str,
                   sms_sizes: dict[str, SmsSize] | None) -> list[Problem]:
    """Render the template with a sample booking, as a send would: a template that parses but
    fails when rendered is reported now, not at its first send (N3); an SMS is measured."""
    kind = path.name.split(".")[0]
    parts = name.split("/")
    resource_id = parts[1] if parts[0] == "resources" and len(parts) >= 4 else None
    folder = "specialist" if resource_id else parts[0]
    language = parts[-2] if len(parts) >= 3 else "en"
    sample = _sample_context({"name": "Physiotherapie am Stadtpark", "address": "Parkstraße 12, 10115 Berlin",
                              "phone": "+49 30 12345678"}, link)
    try:
        out = renderer.render(kind, channel, folder, (language,), sample, timezone="Europe/Berlin", locale=language,
                              resource_id=resource_id)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return [Problem(name, _template_line(exc, path), f"does not render with a sample booking: "
                                                         f"{exc.__class__.__name__}: {exc}")]
    if channel != "sms":
        return []
    encoding, segments = sms_segments(out.text)
    if sms_sizes is not None:
        sms_sizes[name] = SmsSize(encoding, segments, len(out.text))
    if segments > MAX_SMS_SEGMENTS:
        return [Problem(name, None, f"SMS too long: {len(out.text)} characters, {encoding}, {segments} segments "
                                 f"(at most {MAX_SMS_SEGMENTS})")]
    return []


def _whatsapp_entry_lines(text: str) -> dict[str, int]:
    """The line of each entry of bundle.yaml's WhatsApp templates, from YAML's own node marks:
    `info` under `whatsapp:`; `equipment` and `equipment/info` under `whatsapp_for:`; and
    `whatsapp_for` itself."""
    import yaml

    root = yaml.compose(text)
    lines: dict[str, int] = {}
    for key, value in getattr(root, "value", []) if isinstance(root, yaml.MappingNode) else []:
        if key.value == "whatsapp" and isinstance(value, yaml.MappingNode):
            lines.update({str(k.value): k.start_mark.line + 1 for k, _ in value.value})
        elif key.value == "whatsapp_for":
            lines["whatsapp_for"] = key.start_mark.line + 1
            for folder, entries in value.value if isinstance(value, yaml.MappingNode) else []:
                lines[str(folder.value)] = folder.start_mark.line + 1
                for k, _ in entries.value if isinstance(entries, yaml.MappingNode) else []:
                    lines[f"{folder.value}/{k.value}"] = k.start_mark.line + 1
    return lines


def _template_line(exc: BaseException, path: Path) -> int | None:
    """The line of the template `path` where rendering failed: the frames of a compiled template
    carry it, and map their Python line to the template's (as jinja2.debug does)."""
    line, tb = None, exc.__traceback__
    target = str(path)
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None and template.filename == target:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


def _shipped_renderer(root: Path, shipped: Path | str | None) -> Renderer | None:
    """The templates a loaded bundle falls back to, or None when `root` is they (or there are none)."""
    from notifier.settings import shipped_path

    folder = Path(shipped) if shipped is not None else shipped_path("templates")
    if not folder.is_dir() or folder.resolve() == root.resolve():
        return None
    return Renderer(folder, manifest={})


def _check_coverage(root: Path, languages: Iterable[str], kinds: Iterable[Kind], shipped: Renderer | None,
                    company_needs: dict[str, set[tuple[str, int]]], link: str) -> list[Problem]:
    """A template per kind, channel, language and resource type, in the bundle or (for a kind the
    bundle has no file of at all) in the shipped templates: one note per kind and channel taken
    from them, which are checked as the bundle's own are where it matters for this deployment
    (company details, R42; rendered with the sample and its link, an SMS measured); an error per
    one in neither."""
    problems = []
    own = kind_channels(str(p.relative_to(root)) for p in root.rglob("*.j2"))
    for kind in kinds:
        for channel in channels_of(kind):
            taken: set[str] = set()
            for language in languages:
                for resource_type in RESOURCE_TYPES:
                    name = f"{kind.value}.{channel}.j2"
                    if (root / resource_type / language / name).is_file() or \
                            (root / "default" / language / name).is_file():
                        continue
                    default = None
                    if shipped is not None and f"{kind.value}.{channel}" not in own:
                        try:
                            default = shipped.path_for(kind.value, channel, resource_type, (language,))
                        except TemplateMissing:
                            pass
                    if default is not None:
                        taken.add(default)
                        continue
                    problems.append(Problem(
                        f"{resource_type}/{language}/{name}", None,
                        f"missing: no {kind.value} {channel} template in '{language}' for {resource_type} (nor in "
                        f"default/{language}/)" + ("" if f"{kind.value}.{channel}" in own else
                                                   ", and no shipped default to fall back on")))
            if taken and shipped is not None:
                problems.append(_shipped_default_note(kind, channel, taken, shipped))
                _shipped_company_needs(shipped, taken, company_needs)
                for name in sorted(taken):
                    problems += [replace(p, file=f"shipped:{p.file}")
                                 for p in _check_renders(shipped, name, shipped.root / name, channel, link, None)]
    return problems


def _shipped_default_note(kind: Kind, channel: str, used: set[str], shipped: Renderer) -> Problem:
    name = f"{kind.value}.{channel}.j2"
    where = " and ".join(f"{folder}/<language>/{name}" for folder in sorted({n.split("/")[0] for n in used}))
    return Problem(name, None, f"not in this bundle: {kind.value} {channel} messages use the shipped default "
                               f"({where} of {shipped.root}); add {name} to word them yourself", severity="note")


def _shipped_company_needs(shipped: Renderer, names: set[str],
                           company_needs: dict[str, set[tuple[str, int]]]) -> None:
    """The company details (R42) the shipped templates `names` read, under `shipped:<name>`."""
    for name in sorted(names):
        try:
            tree = shipped.env.parse((shipped.root / name).read_text(encoding="utf-8"), name=name)
        except (OSError, UnicodeDecodeError, TemplateSyntaxError):
            continue  # the shipped templates are checked by their own tests
        uses = {(attr, line) for var, attr, line in _attribute_uses(tree) if var == "company" and attr}
        if uses:
            company_needs.setdefault(f"shipped:{name}", set()).update(uses)


def shipped_defaults(problems: Iterable[Problem]) -> list[str]:
    """The `<kind>.<channel>` a validated bundle takes from the shipped defaults (its notes)."""
    return sorted(p.file.removesuffix(".j2") for p in problems if p.severity == "note")


def with_shipped_defaults(files: Mapping[str, str], shipped: Path) -> dict[str, str]:
    """A loaded bundle's files and the shipped templates (`shipped`, a folder) of every kind and
    channel it has no file of: what its messages are rendered from (`Renderer(fallback=...)`)."""
    own = kind_channels(files)
    extra = {str(p.relative_to(shipped)): p for p in sorted(shipped.rglob("*.j2"))}
    return {**files, **{f"shipped:{name}": path.read_text(encoding="utf-8") for name, path in extra.items()
                        if path.name.removesuffix(".j2") not in own}}


def _check_company(needs: dict[str, set[tuple[str, int]]], tenants: Iterable[Tenant]) -> list[Problem]:
    problems = []
    for tenant in tenants:
        for name, uses in sorted(needs.items()):
            for attr, line in sorted(uses):
                if not str(tenant.company.get(attr, "")).strip():
                    problems.append(Problem(name, line, f"tenant '{tenant.id}' has no company detail '{attr}' "
                                                        f"that this template uses (R42)"))
    return problems


def as_json(problems: list[Problem]) -> list[dict[str, Any]]:
    return [asdict(p) for p in problems]
