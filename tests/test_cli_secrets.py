"""`modelfleet secrets …` against a live server: every verb, the value from flags, stdin or a prompt."""

from __future__ import annotations

import base64
import io
import json

import pytest

from endpoints_app.cli.main import main
from endpoints_app.models import Role, Secret, UserProfile
from endpoints_app.services import secrets as secret_services
from endpoints_app.services.tokens import create_token

VALUE = "sk-cli-0d6e4a-very-secret"


class PipedStdin(io.TextIOWrapper):
    """stdin from a pipe: not a terminal, with a binary buffer."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")

    def isatty(self) -> bool:
        return False


class TerminalStdin(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli(live_server, django_user_model, monkeypatch, capsys):
    """Run the CLI as alice (editor); returns (exit code, stdout, stderr)."""
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")
    UserProfile.objects.create(user=alice, role=Role.EDITOR)
    django_user_model.objects.create_user("victor")
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=alice)[1])
    secret_services._cache.clear()

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.django_db(transaction=True)
def test_every_secrets_verb(cli):
    assert cli("secrets", "create-scope", "team")[0] == 0
    assert cli("secrets", "put-secret", "team", "flag", "--string-value", VALUE) == (0, "", "")  # as Databricks'
    assert cli("secrets", "put-secret", "team", "flag", "--string-value", VALUE, "-o", "table") == (
        0,
        "Stored secret flag in scope team\n",
        "",
    )
    assert cli("secrets", "put-secret", "--bytes-value", "raw text", "team", "raw")[0] == 0  # flags first works too
    assert secret_services.resolve(scope="team", key="flag") == VALUE
    assert secret_services.resolve(scope="team", key="raw") == "raw text"  # encoded by the CLI, like Databricks'

    code, out, _ = cli("secrets", "list-scopes")
    assert code == 0 and out.splitlines() == ["Scope  Backend Type", "team   DATABRICKS"]
    code, out, _ = cli("secrets", "list-scopes", "-o", "json")
    assert json.loads(out) == [{"name": "team", "backend_type": "DATABRICKS"}]
    code, out, _ = cli("secrets", "list-secrets", "team")
    assert out.splitlines()[0].split() == ["Key", "Last", "Updated", "Timestamp"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["flag", "raw"] and VALUE not in out
    code, out, _ = cli("secrets", "list-secrets", "team", "-o", "json", "--limit", "1")
    assert [s["key"] for s in json.loads(out)] == ["flag"]

    assert cli("secrets", "put-acl", "team", "victor", "read")[0] == 0
    code, out, _ = cli("secrets", "list-acls", "team", "-o", "json")
    assert json.loads(out) == [
        {"principal": "alice", "permission": "MANAGE"},
        {"principal": "victor", "permission": "READ"},
    ]
    assert json.loads(cli("secrets", "get-acl", "team", "victor")[1]) == {"principal": "victor", "permission": "READ"}
    assert cli("secrets", "get-acl", "team", "victor", "-o", "table")[1].splitlines()[1].split() == ["victor", "READ"]
    assert [a["principal"] for a in json.loads(cli("secrets", "list-acls", "team")[1])] == ["alice", "victor"]
    assert cli("secrets", "delete-acl", "team", "victor")[0] == 0
    code, _, err = cli("secrets", "get-acl", "team", "victor")
    assert code == 1 and err.startswith("Error: No ACL for principal victor")

    assert cli("secrets", "delete-secret", "team", "flag", "-o", "json") == (0, "", "")
    assert not Secret.objects.filter(key="flag").exists()
    assert cli("secrets", "delete-scope", "--json", '{"scope": "team"}')[0] == 0
    code, _, err = cli("secrets", "list-secrets", "team")
    assert code == 1 and "Scope team does not exist" in err


@pytest.mark.django_db(transaction=True)
def test_put_secret_reads_stdin_as_is_when_piped(cli, monkeypatch):
    cli("secrets", "create-scope", "team")
    monkeypatch.setattr("sys.stdin", PipedStdin(b"line one\nline two\n"))
    code, out, err = cli("secrets", "put-secret", "team", "multi")
    assert code == 0 and "line" not in out + err
    assert secret_services.resolve(scope="team", key="multi") == "line one\nline two\n"

    monkeypatch.setattr("sys.stdin", PipedStdin(b""))
    code, _, err = cli("secrets", "put-secret", "team", "empty")
    assert code == 1 and "empty" in err and not Secret.objects.filter(key="empty").exists()


@pytest.mark.django_db(transaction=True)
def test_put_secret_prompts_without_echo_on_a_terminal(cli, monkeypatch):
    cli("secrets", "create-scope", "team")
    prompts = []
    monkeypatch.setattr("sys.stdin", TerminalStdin())
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or VALUE)
    code, out, err = cli("secrets", "put-secret", "team", "typed")
    assert code == 0 and prompts == ["Please enter your secret value: "] and VALUE not in out + err
    assert secret_services.resolve(scope="team", key="typed") == VALUE


@pytest.mark.django_db(transaction=True)
def test_usage_errors_send_nothing(cli):
    cli("secrets", "create-scope", "team")
    code, _, err = cli("secrets", "put-secret", "team", "k", "--string-value", "a", "--bytes-value", "b")
    assert code == 2 and "cannot specify both" in err
    code, _, err = cli("secrets", "put-secret", "team", "k", "--json", '{"scope": "team", "key": "k"}')
    assert code == 2 and "no positional arguments" in err
    code, _, err = cli("secrets", "put-acl", "team", "victor", "OWNER")
    assert code == 2 and "PERMISSION must be one of" in err
    code, _, err = cli("secrets", "put-secret", "team")
    assert code == 2 and "KEY" in err
    assert not Secret.objects.exists()
    code, _, err = cli("secrets", "create-scope", "team")
    assert code == 1 and "already exists" in err


@pytest.mark.django_db(transaction=True)
def test_put_secret_with_json_body(cli):
    cli("secrets", "create-scope", "team")
    body = json.dumps({"scope": "team", "key": "j", "bytes_value": base64.b64encode(b"from json").decode()})
    assert cli("secrets", "put-secret", "--json", body)[0] == 0
    assert secret_services.resolve(scope="team", key="j") == "from json"
