"""docker-compose.yml: every command it runs is a real entry of the notifier CLI."""

from pathlib import Path

import yaml

from notifier.cli import main

ROOT = Path(__file__).resolve().parents[2]


def resolves(argv: list[str]) -> bool:
    command = main
    for word in argv:
        if word.startswith("-"):
            break
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            return not hasattr(command, "commands")  # an argument of a leaf command
        command = sub
    return not hasattr(command, "commands") or bool(command.commands) is False


def test_every_compose_command_is_a_cli_entry():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {name: svc["command"] for name, svc in compose["services"].items()
            if isinstance(svc.get("command"), list) and svc["command"][0] == "notifier"}
    assert {"ingester", "beat", "worker", "flower"} <= set(ours)
    for name, command in ours.items():
        assert resolves(command[1:]), f"{name}: {' '.join(command)} is not a notifier command"
    assert not resolves(["no-such-command"])
