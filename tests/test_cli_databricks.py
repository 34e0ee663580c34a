"""The CLI as someone used to the Databricks CLI meets it, run as a real process against a live server:
JSON where ``databricks`` prints JSON (so ``… | jq`` works), DATABRICKS_* settings and
``~/.databrickscfg`` profiles after Modelfleet's own, the ``permissions`` group, ``--version`` and
shell completion that each shell can load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from endpoints_app.cli.completion import command_words
from endpoints_app.cli.config import resolve_profile
from endpoints_app.cli.errors import CliError
from endpoints_app.cli.main import build_parser
from endpoints_app.models import Role, UserProfile
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready

MODELFLEET = str(Path(sys.executable).parent / "modelfleet")
SETTINGS = ("MODELFLEET_", "DATABRICKS_")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def bare_env(home: Path) -> dict[str, str]:
    """The environment of a shell with no Modelfleet or Databricks settings, HOME in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS)}
    return env | {"HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def modelfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODELFLEET, *args], env=env, capture_output=True, text=True, timeout=120)


def shell(env: dict[str, str], command: str, program: str = "bash") -> subprocess.CompletedProcess[str]:
    env = env | {"PATH": f"{Path(MODELFLEET).parent}{os.pathsep}{env.get('PATH', '')}"}
    return subprocess.run([program, "-c", command], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def own_env(bare_env: dict[str, str], live_server, token: str) -> dict[str, str]:
    """Modelfleet's own settings, pointing at the live server as the editor alice."""
    return bare_env | {"MODELFLEET_HOST": live_server.url, "MODELFLEET_TOKEN": token}


# -- output -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_get_list_create_and_update_print_json_like_databricks(own_env, api, registered_models, tmp_path):
    body = endpoint_body("churn", (registered_models["iris"], "1"))
    (tmp_path / "churn.json").write_text(json.dumps(body))
    created = modelfleet(own_env, "serving-endpoints", "create", "--json", f"@{tmp_path / 'churn.json'}", "--no-wait")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    mark_ready("churn")

    got = modelfleet(own_env, "serving-endpoints", "get", "churn")
    assert json.loads(got.stdout) == api.get("/api/2.0/serving-endpoints/churn").json()
    assert got.stdout == modelfleet(own_env, "serving-endpoints", "get", "churn", "-o", "json").stdout
    assert got.stdout.startswith('{\n  "id": ') and got.stdout.endswith("\n}\n")  # indented by 2, like Go's

    listed = modelfleet(own_env, "serving-endpoints", "list")
    assert [e["name"] for e in json.loads(listed.stdout)] == ["churn"]

    updated = modelfleet(
        own_env,
        "serving-endpoints",
        "update-config",
        "churn",
        "--json",
        json.dumps(endpoint_body("churn", (registered_models["iris"], "2"))["config"]),
        "--no-wait",
    )
    assert json.loads(updated.stdout)["pending_config"]["served_entities"][0]["entity_version"] == "2"
    patched = modelfleet(
        own_env, "serving-endpoints", "patch", "churn", "--json", '{"add_tags": [{"key": "t", "value": "v"}]}'
    )
    assert json.loads(patched.stdout) == {"tags": [{"key": "t", "value": "v"}]}

    table = modelfleet(own_env, "serving-endpoints", "get", "churn", "-o", "table")
    assert "Name:           churn" in table.stdout.splitlines()
    assert modelfleet(own_env | {"MODELFLEET_OUTPUT_FORMAT": "table"}, "serving-endpoints", "list").stdout.startswith(
        "NAME"
    )
    assert modelfleet(own_env | {"DATABRICKS_OUTPUT_FORMAT": "table"}, "serving-endpoints", "list").stdout.startswith(
        "NAME"
    )


@pytest.mark.django_db(transaction=True)
def test_the_other_databricks_serving_endpoints_verbs(own_env, api, registered_models):
    create(api, endpoint_body("churn", (registered_models["iris"], "1")))
    limits = {"rate_limits": [{"calls": 9, "key": "user", "renewal_period": "minute"}]}
    put = modelfleet(own_env, "serving-endpoints", "put", "churn", "--json", json.dumps(limits))
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == limits
    emails = {"email_notifications": {"on_update_failure": ["ops@example.com"]}}
    notified = modelfleet(own_env, "serving-endpoints", "update-notifications", "churn", "--json", json.dumps(emails))
    assert json.loads(notified.stdout) == {"name": "churn", **emails}
    telemetry = modelfleet(own_env, "serving-endpoints", "patch-telemetry-config", "churn", "--json", "{}")
    assert json.loads(telemetry.stdout)["name"] == "churn"

    # What Modelfleet does not serve: the server's "not supported", not "invalid choice".
    for argv in (
        ("create-provisioned-throughput-endpoint", "--json", '{"name": "pt-ep", "config": {}}'),
        ("update-provisioned-throughput-endpoint-config", "churn", "--json", '{"config": {}}'),
        ("http-request", "my-connection", "get", "/v1/things", "--json", '{"q": 1}'),
    ):
        refused = modelfleet(own_env, "serving-endpoints", *argv)
        assert (refused.returncode, "not supported" in refused.stderr) == (1, True), refused.stderr


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_jq_scripts_written_for_databricks_work(own_env, api, registered_models):
    endpoint = create(api, endpoint_body("churn", (registered_models["iris"], "1")))
    mark_ready("churn")
    script = (
        "set -o pipefail; "
        "modelfleet serving-endpoints list | jq -r '.[].name'; "
        "modelfleet serving-endpoints get churn | jq -r .state.ready; "
        "modelfleet serving-endpoints get churn | jq -r .id"
    )
    result = shell(own_env, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["churn", "READY", endpoint["id"]]


# -- settings: Modelfleet's first, then the Databricks CLI's -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_databricks_host_and_token_are_used_when_modelfleet_has_none(bare_env, live_server, token, api):
    env = bare_env | {"DATABRICKS_HOST": live_server.url, "DATABRICKS_TOKEN": token}
    result = modelfleet(env, "serving-endpoints", "list", "--debug")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert "($DATABRICKS_HOST/$DATABRICKS_TOKEN)" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_databrickscfg_profiles_are_read_like_the_databricks_cli(bare_env, home, live_server, token):
    (home / ".databrickscfg").write_text(
        f"[DEFAULT]\nhost = {live_server.url}\ntoken = {token}\n\n"
        f"[stale]\nhost = {live_server.url}\ntoken = dapi-no-such-token\n"
    )
    assert modelfleet(bare_env, "serving-endpoints", "list").returncode == 0
    refused = [
        modelfleet(bare_env, "serving-endpoints", "list", "-p", "stale"),
        modelfleet(bare_env, "serving-endpoints", "list", "--profile", "stale"),
        modelfleet(bare_env | {"DATABRICKS_CONFIG_PROFILE": "stale"}, "serving-endpoints", "list"),
    ]
    assert [(r.returncode, r.stderr) for r in refused] == [(1, "Error: Invalid access token\n")] * 3

    # The default profile named in [__settings__], as `databricks auth switch` writes it.
    (home / ".databrickscfg").write_text(
        f"[__settings__]\ndefault_profile = stale\n\n[DEFAULT]\nhost = {live_server.url}\ntoken = {token}\n\n"
        f"[stale]\nhost = {live_server.url}\ntoken = dapi-no-such-token\n"
    )
    assert modelfleet(bare_env, "serving-endpoints", "list").stderr == "Error: Invalid access token\n"

    # DATABRICKS_CONFIG_FILE moves the file.
    moved = home / "elsewhere.cfg"
    moved.write_text(f"[DEFAULT]\nhost = {live_server.url}\ntoken = {token}\n")
    assert modelfleet(bare_env | {"DATABRICKS_CONFIG_FILE": str(moved)}, "serving-endpoints", "list").returncode == 0


@pytest.mark.django_db(transaction=True)
def test_modelfleet_settings_win_over_databricks_ones(bare_env, home, live_server, token):
    (home / ".databrickscfg").write_text(f"[DEFAULT]\nhost = {live_server.url}\ntoken = dapi-no-such-token\n")
    theirs = {"DATABRICKS_HOST": live_server.url, "DATABRICKS_TOKEN": "dapi-no-such-token"}
    assert modelfleet(bare_env | theirs, "serving-endpoints", "list").returncode == 1

    (home / ".modelfleetcfg").write_text(f"[DEFAULT]\nhost = {live_server.url}\ntoken = {token}\n")
    assert modelfleet(bare_env | theirs, "serving-endpoints", "list").returncode == 0
    assert (
        modelfleet(bare_env | theirs | {"DATABRICKS_CONFIG_PROFILE": "x"}, "serving-endpoints", "list").returncode == 0
    )
    (home / ".modelfleetcfg").unlink()
    own = {"MODELFLEET_HOST": live_server.url, "MODELFLEET_TOKEN": token}
    assert modelfleet(bare_env | theirs | own, "serving-endpoints", "list").returncode == 0


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_host_is_never_paired_with_the_other_familys_token(tmp_path: Path) -> None:
    env = {
        "MODELFLEET_CONFIG_FILE": str(tmp_path / "none"),
        "DATABRICKS_CONFIG_FILE": write(tmp_path / "dbcfg", "[DEFAULT]\nhost = https://db.example\ntoken = dapi1\n"),
    }
    with pytest.raises(CliError, match="no Modelfleet token configured"):
        resolve_profile(environ=env | {"MODELFLEET_HOST": "http://127.0.0.1:8000"})
    with pytest.raises(CliError, match="no Modelfleet host configured"):
        resolve_profile(environ=env | {"MODELFLEET_TOKEN": "mf-1"})
    # Within one family a lone variable overrides its profile's field, as both CLIs do.
    assert resolve_profile(environ=env | {"DATABRICKS_TOKEN": "dapi2"}).token == "dapi2"
    assert resolve_profile(environ=env | {"DATABRICKS_HOST": "db2.example:443"}).host == "https://db2.example"


def test_a_named_profile_is_looked_up_in_modelfleetcfg_then_databrickscfg(tmp_path: Path) -> None:
    env = {
        "MODELFLEET_CONFIG_FILE": write(tmp_path / "mf", "[both]\nhost = http://127.0.0.1:1\ntoken = mf\n"),
        "DATABRICKS_CONFIG_FILE": write(
            tmp_path / "db", "[both]\nhost = https://db\ntoken = d1\n\n[only-db]\nhost = https://db\ntoken = d2\n"
        ),
    }
    assert resolve_profile("both", env).token == "mf"
    assert resolve_profile("only-db", env).token == "d2"
    assert resolve_profile(environ=env | {"MODELFLEET_CONFIG_PROFILE": "only-db"}).token == "d2"
    with pytest.raises(CliError, match=f"profile 'nope' not found in {tmp_path / 'mf'} or {tmp_path / 'db'}"):
        resolve_profile("nope", env)
    with pytest.raises(CliError, match="profile '__settings__' not found"):
        resolve_profile("__settings__", env)


def test_a_databricks_profile_without_a_token_says_only_tokens_work(tmp_path: Path) -> None:
    env = {
        "MODELFLEET_CONFIG_FILE": str(tmp_path / "none"),
        "DATABRICKS_CONFIG_FILE": write(
            tmp_path / "db",
            "[DEFAULT]\nhost = https://db\nauth_type = databricks-cli\n\n"
            "[sp]\nhost = https://db\nclient_id = abc\nclient_secret = s\n",
        ),
    }
    with pytest.raises(CliError, match="signs in with 'databricks-cli': Modelfleet accepts personal access tokens"):
        resolve_profile(environ=env)
    with pytest.raises(CliError, match="signs in with 'client_id'"):
        resolve_profile("sp", env)
    with pytest.raises(CliError, match="default_profile"):
        resolve_profile(
            environ=env | {"DATABRICKS_CONFIG_FILE": write(tmp_path / "s", "[__settings__]\ndefault_profile = gone\n")}
        )


def test_nothing_configured_names_every_place_looked_at(bare_env, home) -> None:
    result = modelfleet(bare_env, "serving-endpoints", "list")
    assert result.returncode == 1
    for place in ("$MODELFLEET_HOST", ".modelfleetcfg", "$DATABRICKS_HOST", ".databrickscfg", "make run"):
        assert place in result.stderr


# -- permissions --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_permissions_group_reads_and_changes_an_endpoints_acl(own_env, api, registered_models, django_user_model):
    from databricks.sdk import WorkspaceClient

    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-1234")
    UserProfile.objects.create(user=bob, role=Role.VIEWER)
    create(api, endpoint_body("churn", (registered_models["iris"], "1")))
    endpoint_id = json.loads(modelfleet(own_env, "serving-endpoints", "get", "churn").stdout)["id"]

    got = modelfleet(own_env, "permissions", "get", "serving-endpoints", endpoint_id)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["object_id"] == f"/serving-endpoints/{endpoint_id}"
    assert got.stdout == modelfleet(own_env, "serving-endpoints", "get-permissions", endpoint_id).stdout

    levels = modelfleet(own_env, "permissions", "get-permission-levels", "serving-endpoints", endpoint_id)
    assert [lv["permission_level"] for lv in json.loads(levels.stdout)["permission_levels"]] == [
        "CAN_VIEW",
        "CAN_QUERY",
        "CAN_MANAGE",
    ]

    grant = {"access_control_list": [{"user_name": "bob", "permission_level": "CAN_QUERY"}]}
    updated = modelfleet(
        own_env, "permissions", "update", "serving-endpoints", endpoint_id, "--json", json.dumps(grant)
    )
    assert updated.returncode == 0, updated.stderr
    assert {"user_name": "bob", "display_name": "bob", "all_permissions": [
        {"permission_level": "CAN_QUERY", "inherited": False}
    ]} in json.loads(updated.stdout)["access_control_list"]  # fmt: skip

    # What the CLI changed is what the SDK reads.
    sdk = WorkspaceClient(host=own_env["MODELFLEET_HOST"], token=own_env["MODELFLEET_TOKEN"])
    read = sdk.permissions.get("serving-endpoints", endpoint_id)
    assert ("bob", "CAN_QUERY") in [
        (a.user_name, a.all_permissions[0].permission_level.value) for a in read.access_control_list
    ]

    mine = {"access_control_list": [{"user_name": "alice", "permission_level": "CAN_MANAGE"}]}
    replaced = modelfleet(own_env, "permissions", "set", "serving-endpoints", endpoint_id, "--json", json.dumps(mine))
    assert replaced.returncode == 0, replaced.stderr
    assert "bob" not in [a.get("user_name") for a in json.loads(replaced.stdout)["access_control_list"]]

    other_type = modelfleet(own_env, "permissions", "get", "clusters", endpoint_id)
    assert other_type.returncode == 2 and "invalid choice: 'clusters'" in other_type.stderr
    missing = modelfleet(own_env, "permissions", "get", "serving-endpoints", "0" * 32)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    no_body = modelfleet(own_env, "permissions", "set", "serving-endpoints", endpoint_id)
    assert no_body.returncode == 2 and "--json" in no_body.stderr


# -- version and completion --------------------------------------------------------------------


def test_version_prints_the_package_version(bare_env) -> None:
    expected = f"Modelfleet CLI v{version('modelfleet')}\n"
    assert modelfleet(bare_env, "--version").stdout == expected
    assert modelfleet(bare_env, "version").stdout == expected
    info = json.loads(modelfleet(bare_env, "version", "-o", "json").stdout)
    assert info["Version"] == version("modelfleet") and info["ProjectName"] == "modelfleet"


BASH_COMPLETE = """
source <(modelfleet completion bash) || exit 1
complete_line() {
    COMP_WORDS=($1); [[ "$1" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()
    _modelfleet_completion; echo "${COMPREPLY[*]}"
}
complete_line "modelfleet servin"
complete_line "modelfleet -p dev serving-endpoints get-s"
complete_line "modelfleet serving-endpoints get churn -o "
complete_line "modelfleet permissions "
complete_line "modelfleet permissions set "
complete_line "modelfleet serving-endpoints create --no"
complete_line "modelfleet completion "
"""


def test_bash_sources_the_completion_script_and_completes(bare_env) -> None:
    assert shell(bare_env, "source <(modelfleet completion bash)").returncode == 0
    result = shell(bare_env, BASH_COMPLETE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "serving-endpoints",
        "get-status",
        "text json table",
        "get get-permission-levels set update",
        "serving-endpoints",
        "--no-wait",
        "bash zsh fish",
    ]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_loads_the_completion_script(bare_env) -> None:
    # compgen -F runs the completion function as zsh's bashcompinit does on Tab; zsh's compadd
    # then keeps the words that start with what was typed.
    script = (
        "source <(modelfleet completion zsh) || exit 1; "
        "COMP_WORDS=(modelfleet serving-endpoints get churn -o ''); COMP_CWORD=5; "
        "compgen -F _modelfleet_completion; "
        "COMP_WORDS=(modelfleet permissions ''); COMP_CWORD=2; compgen -F _modelfleet_completion"
    )
    result = shell(bare_env, script, program="zsh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["text", "json", "table", "get", "get-permission-levels", "set", "update"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_loads_the_completion_script(bare_env) -> None:
    script = (
        "modelfleet completion fish | source; "
        "complete -C 'modelfleet serving-endpoints get-s'; complete -C 'modelfleet -o json permissions g'"
    )
    result = shell(bare_env, script, program="fish")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["get-status", "get", "get-permission-levels"]


def test_the_completion_words_cover_every_command_of_the_parser() -> None:
    words = command_words(build_parser())
    assert {"serving-endpoints", "permissions", "secrets", "version", "completion"} <= set(words[""].commands)
    assert words["serving-endpoints create"].flag_choices["--output"] == ["text", "json", "table"]
    assert "--json" in words["serving-endpoints create"].value_flags
    assert "--no-wait" not in words["serving-endpoints create"].value_flags
    assert words["secrets create-scope"].flag_choices["--scope-backend-type"] == ["DATABRICKS", "AZURE_KEYVAULT"]
    assert words["completion"].arg_choices == ["bash", "zsh", "fish"]
