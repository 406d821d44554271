"""Issue 9, acceptance 3 (P5, P7, N7): the deployment files are valid and run the real thing.

- docker-compose.yml validates against the Compose Specification's JSON Schema (the copy
  check-jsonschema ships), deploy/k8s/*.yaml against the Kubernetes schemas of the versions
  below (kubernetes-validate ships them, strict: unknown fields are errors). No Docker engine
  and no cluster are needed.
- Every command they run (containers, health checks) parses as a `notifier` CLI command with
  its options, so a renamed command or flag breaks this test, not a deployment.
- Secrets are never literal; every NOTIFIER_* variable they set is a real setting.
- The dashboard and the alerts only use metrics the processes export.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from notifier.cli import main
from notifier.settings import OTHER_VARIABLES, Settings
from tasks.celery_app import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")  # what the manifests claim to run on
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|DATABASE_URL", re.I)
SETTINGS = {f"NOTIFIER_{f.name.upper()}" for f in fields(Settings) if f.name != "extra"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def manifests() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def parses(argv: list[str]) -> bool:
    """Whether `notifier <argv>` is a real command line: commands, options and arguments."""
    def remaining(ctx: click.Context) -> list[str]:
        with warnings.catch_warnings():  # Click 8.2 deprecates protected_args; 9 folds it into args
            warnings.simplefilter("ignore", DeprecationWarning)
            return [*ctx.protected_args, *ctx.args]

    try:
        ctx = main.make_context("notifier", list(argv))
        command: click.Command = main
        rest = remaining(ctx)
        while isinstance(command, click.Group):
            if not rest:
                return False
            name, sub, rest = command.resolve_command(ctx, rest)
            ctx = sub.make_context(name, rest, parent=ctx)
            command, rest = sub, remaining(ctx) if isinstance(sub, click.Group) else []
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code == 0
    except click.exceptions.ClickException:
        return False
    return True


def notifier_commands() -> dict[str, list[str]]:
    """Every `notifier ...` command line of the compose file and the manifests, by where it is."""
    found: dict[str, list[str]] = {}
    for name, service in compose()["services"].items():
        if isinstance(service.get("command"), list) and service["command"][0] == "notifier":
            found[f"compose {name}"] = service["command"]
        test = (service.get("healthcheck") or {}).get("test", [])
        if test[:2] == ["CMD", "notifier"]:
            found[f"compose {name} healthcheck"] = test[1:]
    for file, doc in manifests():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            found[f"{file} {doc['metadata']['name']}"] = container["command"]
    return found


# --- the compose file ---------------------------------------------------------------------------

def compose_schema() -> dict:
    return json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())


def test_P7_compose_file_validates_against_the_compose_specification():
    """Acceptance 3: docker-compose.yml is a valid Compose file; the validator is live (a typo fails)."""
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors
    typo = copy.deepcopy(compose())
    typo["services"]["beat"]["restrat"] = "always"
    assert not validator.is_valid(typo)


def test_P3_compose_runs_one_scalable_worker_pool_per_queue_and_every_process():
    """P1-P5: Redis, PostgreSQL, RabbitMQ (profile), ingester, one beat, a pool per queue, web,
    Flower; every long-running service restarts and has a health check; pools scale with
    --scale (no fixed container_name, no host port)."""
    services = compose()["services"]
    assert {"redis", "postgres", "rabbitmq", "init", "ingester", "beat", "web", "flower"} <= set(services)
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    pools = {name: svc for name, svc in services.items() if name.startswith("worker-")}
    queues = {svc["command"][svc["command"].index("-Q") + 1] for svc in pools.values()}
    assert queues == set(ALL_QUEUES) and len(pools) == len(ALL_QUEUES)
    for name, svc in pools.items():
        assert "container_name" not in svc and "ports" not in svc, f"{name} could not be scaled"
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["init"]["command"] == ["notifier", "init"] and services["init"]["restart"] == "no"
    for name, svc in services.items():
        if svc.get("profiles") or name == "init":
            continue
        assert svc.get("restart") in ("unless-stopped", "always"), name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        if svc.get("command", [None])[0] == "notifier":
            assert svc["depends_on"]["init"] == {"condition": "service_completed_successfully"}, name


def test_N7_compose_takes_secrets_from_the_environment_never_literal():
    """N7: every password, token and secret is a ${VAR} from the environment or .env; NOTIFIER_*
    variables are real settings."""
    def check(where: str, env: dict) -> None:
        for key, value in env.items():
            if key.startswith("NOTIFIER_"):
                assert key in SETTINGS | OTHER_VARIABLES, f"{where}: {key} is not a setting"
            if SECRET_NAMES.search(key):
                assert "${" in str(value), f"{where}: {key} is written into the file"
                literal = re.sub(r"\$\{[^}]*\}", "", str(value))
                assert not re.search(r":[^@/]+@", literal), f"{where}: {key} carries a literal password"

    for name, svc in compose()["services"].items():
        check(name, svc.get("environment") or {})
    notifier = compose()["services"]["web"]
    assert notifier["env_file"] == [{"path": ".env", "required": False}]
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_P5_tenants_and_bundles_come_from_a_mounted_folder_and_load_into_a_running_deployment():
    """Issue 21: every notifier container reads tenants and bundles from the config folder mounted
    read-only at /etc/notifier, and the documented commands that load them are real commands."""
    services = compose()["services"]
    for name, svc in services.items():
        if svc.get("command", [None])[0] == "notifier":
            assert "${NOTIFIER_CONFIG_DIR:-./config}:/etc/notifier:ro" in svc["volumes"], name
            env = svc["environment"]
            assert env["NOTIFIER_TENANTS_PATH"] == "/etc/notifier/tenants" and env["NOTIFIER_CONFIG"].startswith(
                "/etc/notifier/"), name
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "config" / "bundles" / "README.md").read_text()
    documented = re.findall(r"docker compose run --rm init (notifier [^\n]+)", text)
    assert len(documented) >= 3
    for line in documented:  # the paths as the container sees them, for a bundle that exists here
        line = line.replace("/etc/notifier/bundles/NAME", str(ROOT / "templates")).replace("TENANT", "salon-berlin")
        assert parses(line.replace("/etc/notifier", str(ROOT / "config")).split()[1:]), line


def test_the_dev_profile_catches_every_mail_in_a_mail_catcher_with_a_web_ui():
    services = compose()["services"]
    mailpit = services["mailpit"]
    assert mailpit["profiles"] == ["dev"] and mailpit["ports"] == ["127.0.0.1:${MAILPIT_PORT:-8025}:8025"]
    env = services["worker-email"]["environment"]
    assert (env["NOTIFIER_SMTP_HOST"], env["NOTIFIER_SMTP_PORT"]) == ("${NOTIFIER_SMTP_HOST:-mailpit}",
                                                                      "${NOTIFIER_SMTP_PORT:-1025}")


def test_publishing_the_broker_is_opt_in_and_on_loopback_unless_told():
    """The compose file publishes no broker port; deploy/compose.publish.yml, given with -f, does:
    on the host's loopback unless REDIS_PUBLISH / RABBITMQ_PUBLISH say otherwise."""
    assert "ports" not in compose()["services"]["redis"] and "ports" not in compose()["services"]["rabbitmq"]
    override = yaml.safe_load((ROOT / "deploy" / "compose.publish.yml").read_text())
    validator = jsonschema.Draft202012Validator(compose_schema())
    assert not list(validator.iter_errors(override))
    assert override["services"] == {"redis": {"ports": ["${REDIS_PUBLISH:-127.0.0.1:6379}:6379"]},
                                    "rabbitmq": {"ports": ["${RABBITMQ_PUBLISH:-127.0.0.1:5672}:5672"]}}


# --- Kubernetes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_P7_manifests_validate_against_the_kubernetes_schemas(version):
    """Acceptance 3: each document of deploy/k8s validates (strict) against its apiVersion and kind."""
    docs = manifests()
    assert {doc["kind"] for _, doc in docs} >= {"Deployment", "Service", "ConfigMap", "Job",
                                                "HorizontalPodAutoscaler"}
    for file, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{file} {doc['kind']} {doc['metadata']['name']}: {exc.message}")
    broken = copy.deepcopy(next(doc for _, doc in docs if doc["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def deployments() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "Deployment"}


def test_P3_manifests_run_a_pool_per_queue_one_beat_and_autoscale_the_channel_pools():
    """P2, P3: a Deployment per worker queue, exactly one beat (Recreate, no autoscaler), every
    container probed; the autoscalers target channel pools only."""
    deps = deployments()
    queues = {d["spec"]["template"]["spec"]["containers"][0]["command"][3] for n, d in deps.items()
              if n.startswith("notifier-worker-")}
    assert queues == set(ALL_QUEUES)
    beat = deps["notifier-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    targets = {doc["spec"]["scaleTargetRef"]["name"] for _, doc in manifests()
               if doc["kind"] == "HorizontalPodAutoscaler"}
    assert targets and targets <= {n for n in deps if n.startswith("notifier-worker-")} - {"notifier-worker-sweep"}
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container.get("livenessProbe"), f"{name} has no liveness probe"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
    assert deps["notifier-web"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] \
        == "/health"
    services = {doc["metadata"]["name"] for _, doc in manifests() if doc["kind"] == "Service"}
    assert {"notifier-web", "notifier-flower"} <= services


def test_N7_manifests_reference_a_secret_and_hold_no_secret_values():
    """N7: no Secret with values in the repository; pods take secrets from a referenced Secret;
    the ConfigMap holds real settings and nothing secret."""
    docs = manifests()
    assert not [doc for _, doc in docs if doc["kind"] == "Secret"]
    [config] = [doc for _, doc in docs if doc["kind"] == "ConfigMap"]
    for key in config["data"]:
        assert key in SETTINGS and not SECRET_NAMES.search(key), key
    for name, dep in deployments().items():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "notifier-secrets"}} in container["envFrom"], name
            assert not any(SECRET_NAMES.search(e["name"]) and "value" in e for e in container.get("env", [])), name


# --- commands -----------------------------------------------------------------------------------

def test_P7_every_command_the_deployment_runs_is_a_real_cli_entry():
    """Acceptance 3: containers and health checks run `notifier` commands whose words and options parse."""
    commands = notifier_commands()
    assert {"compose ingester", "compose beat", "compose worker-email", "compose flower",
            "compose web healthcheck", "workers.yaml notifier-worker-sms", "beat.yaml notifier-beat"} <= set(commands)
    for where, command in commands.items():
        assert command[0] == "notifier" and parses(command[1:]), f"{where}: {' '.join(command)} does not parse"
    assert not parses(["no-such-command"])
    assert not parses(["worker", "--no-such-flag"])
    assert not parses(["templates"])


def test_P7_image_is_multi_stage_non_root_and_runs_the_cli():
    """P7: deploy/Dockerfile builds in one stage, runs in another as a non-root user, and its
    default command is a real CLI entry."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    [user] = re.findall(r"^USER (\S+)", text, re.M)
    assert user.split(":")[0] not in ("0", "root")
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    assert cmd[0] == "notifier" and parses(cmd[1:])


# --- dashboard and alerts -------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    """Metric families the processes export: the workers', ingester's and beat's collectors, and
    those the web process reads from the store (notifier/web/metrics.py)."""
    from prometheus_client import REGISTRY, generate_latest

    from notifier.observability.metrics import metrics

    metrics()
    names = set(re.findall(r"^# TYPE (notifier_\w+) ", generate_latest(REGISTRY).decode(), re.M))
    names |= set(re.findall(r'"(notifier_\w+)"', (ROOT / "notifier" / "web" / "metrics.py").read_text()))
    return {family(name) for name in names}


def family(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def used_metrics(text: str) -> set[str]:
    return {family(name) for name in re.findall(r"\bnotifier_\w+", text)}


def test_P5_dashboard_and_alerts_use_only_metrics_the_processes_export():
    """Operations: a renamed metric breaks this test, not the dashboard on the wall at 3 a.m."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15 and dashboard["templating"]["list"][0]["type"] == "datasource"
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [r for group in alerts["groups"] for r in group["rules"]]
    assert all(r["alert"] and r["expr"] for r in rules)
    exported = exported_metrics()
    for where, text in [("dashboard", "\n".join(exprs)), ("alerts", "\n".join(r["expr"] for r in rules))]:
        unknown = used_metrics(text) - exported
        assert not unknown, f"{where} uses metrics nobody exports: {sorted(unknown)}"
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        assert rule["alert"] in operations, f"docs/operations.md does not explain {rule['alert']}"


# --- production mode (issue 16) -------------------------------------------------------------------

def _interpolated(value: str, given: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, innermost first, from `given`."""
    pattern = re.compile(r"\$\{(\w+)(?::([-?])((?:[^{}]|\{[^{}]*\})*))?\}")
    while pattern.search(value):
        value = pattern.sub(lambda m: given.get(m.group(1)) or (m.group(3) if m.group(2) == "-" else ""), value)
    return value


def test_compose_runs_every_process_in_production_mode_and_its_settings_pass_it():
    from notifier.settings import load_settings

    dotenv = {"POSTGRES_PASSWORD": "pg-pw", "REDIS_PASSWORD": "redis-pw", "NOTIFIER_LINK_SECRET": "l" * 32,
              "NOTIFIER_WEBHOOK_SECRET": "w" * 32, "NOTIFIER_METRICS_TOKEN": "m" * 32, "FLOWER_BASIC_AUTH": "a:b"}
    for name, svc in compose()["services"].items():
        if (svc.get("command") or [None])[0] != "notifier":
            continue
        env = {k: _interpolated(str(v), dotenv).replace("/etc/notifier", str(ROOT / "config"))  # the mount
               for k, v in svc["environment"].items()}
        assert env["NOTIFIER_ENV"] == "production", name
        settings = load_settings({k: v for k, v in env.items() if k.startswith("NOTIFIER_")})  # raises if refused
        assert settings.broker_url == "redis://:redis-pw@redis:6379/0", name
    assert "--requirepass" in compose()["services"]["redis"]["command"]
    assert compose()["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_manifests_run_in_production_mode_with_broker_urls_from_the_secret():
    [config] = [doc for _, doc in manifests() if doc["kind"] == "ConfigMap"]
    assert config["data"]["NOTIFIER_ENV"] == "production"
    assert not {"NOTIFIER_BROKER_URL", "NOTIFIER_EVENTS_URL", "NOTIFIER_DATABASE_URL"} & set(config["data"])
    for _, doc in manifests():
        annotations = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        if doc["metadata"]["name"] == "notifier-web":  # /metrics needs the token: a ServiceMonitor scrapes it
            assert "prometheus.io/scrape" not in annotations
