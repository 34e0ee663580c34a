"""Tests of the ``modelfleet`` command-line client that need no Modelfleet server and no Django.

HTTP behaviour is checked against a tiny ``http.server`` on loopback that answers with canned
Databricks-shaped JSON: it stands in for the wire format only (end-to-end tests drive the real
server). The CLI runs in-process through ``main([...])``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import format_duration, parse_duration, parse_json_arg
from endpoints_app.cli.commands_models import build_model_archive
from endpoints_app.cli.commands_serving import update_config_body
from endpoints_app.cli.config import resolve_profile, write_default_profile
from endpoints_app.cli.errors import CliError, UsageError
from endpoints_app.cli.main import build_parser, main

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "mf-test-token"


# -- sample data (shapes from reference §2.5) -------------------------------------------------


def served_entity(name: str = "churn_model-1", version: str = "1", deployment: str = "DEPLOYMENT_READY", msg: str = ""):
    return {
        "name": name,
        "entity_name": "main.ml.churn_model",
        "entity_version": version,
        "workload_size": "Small",
        "workload_type": "CPU",
        "scale_to_zero_enabled": True,
        "creator": "alice@example.com",
        "creation_timestamp": 1788718020000,
        "state": {"deployment": deployment, "deployment_state_message": msg},
    }


def sample_endpoint(config_update: str = "NOT_UPDATING", ready: str = "READY", **extra: Any) -> dict[str, Any]:
    endpoint = {
        "id": "8f1c2b7e9d0a4c55a3e1b2c3d4e5f601",
        "name": "churn",
        "creator": "alice@example.com",
        "creation_timestamp": 1788718020000,
        "last_updated_timestamp": 1788718080000,
        "state": {"ready": ready, "config_update": config_update},
        "config": {
            "config_version": 1,
            "served_entities": [served_entity()],
            "traffic_config": {
                "routes": [
                    {
                        "served_model_name": "churn_model-1",
                        "served_entity_name": "churn_model-1",
                        "traffic_percentage": 100,
                    }
                ]
            },
        },
        "tags": [{"key": "team", "value": "ml"}],
        "permission_level": "CAN_MANAGE",
        "route_optimized": False,
        "description": "",
    }
    endpoint.update(extra)
    return endpoint


def pending_config(deployment: str = "DEPLOYMENT_CREATING", msg: str = "") -> dict[str, Any]:
    return {
        "config_version": 2,
        "start_time": 1788719000000,
        "served_entities": [served_entity("churn_model-2", "2", deployment, msg)],
        "traffic_config": {"routes": [{"served_model_name": "churn_model-2", "traffic_percentage": 100}]},
    }


# -- a canned HTTP server ---------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CannedServer:
    """Answers ``(METHOD, path)`` from ``routes``; a list of answers is served in turn, the last repeating.

    An answer is ``(status, body)`` or ``(status, body, headers)``; a dict/list body is sent as JSON.
    Unknown routes get a Databricks-style 404.
    """

    url: str = ""
    routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Any) -> None:
        self.routes[(method, path)] = list(answers)

    def answer(self, method: str, path: str) -> tuple[int, Any, dict[str, str]]:
        answers = self.routes.get((method, path))
        if not answers:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"no route {method} {path}"}, {}
        current = answers.pop(0) if len(answers) > 1 else answers[0]
        status, body, *rest = current
        return status, body, (rest[0] if rest else {})

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


def _handler_for(server: CannedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.requests.append(
                Recorded(self.command, split.path, parse_qs(split.query), dict(self.headers.items()), body)
            )
            status, payload, headers = server.answer(self.command, split.path)
            if isinstance(payload, dict | list):
                data, content_type = json.dumps(payload).encode(), "application/json"
            else:
                data, content_type = str(payload).encode(), "text/plain; charset=utf-8"
            self.send_response(status)
            headers = {"Content-Type": content_type, **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    return Handler


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ambient MODELFLEET_* or DATABRICKS_* settings; both config files live in tmp_path."""
    for name in list(os.environ):
        if name.startswith(("MODELFLEET_", "DATABRICKS_")):
            monkeypatch.delenv(name)
    cfg = tmp_path / "modelfleetcfg"
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "databrickscfg"))
    return cfg


@pytest.fixture
def server(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CannedServer]:
    canned = CannedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(canned))
    canned.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("MODELFLEET_HOST", canned.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", TOKEN)
    yield canned
    httpd.shutdown()
    httpd.server_close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- config -----------------------------------------------------------------------------------


def write_cfg(path: Path, text: str) -> None:
    path.write_text(text)


def test_default_profile_is_used_when_nothing_else_is_set(clean_env: Path) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://127.0.0.1:8000/\ntoken = t-default\n")
    profile = resolve_profile()
    assert (profile.host, profile.token) == ("http://127.0.0.1:8000", "t-default")


def test_named_profile_wins_over_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://a\ntoken = ta\n\n[staging]\nhost = https://b.example\ntoken = tb\n")
    monkeypatch.setenv("MODELFLEET_HOST", "http://env")
    monkeypatch.setenv("MODELFLEET_TOKEN", "tenv")
    profile = resolve_profile("staging")
    assert (profile.host, profile.token) == ("https://b.example", "tb")


def test_env_host_and_token_win_over_config_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://a\ntoken = ta\n")
    monkeypatch.setenv("MODELFLEET_HOST", "http://env:9000")
    monkeypatch.setenv("MODELFLEET_TOKEN", "tenv")
    assert (resolve_profile().host, resolve_profile().token) == ("http://env:9000", "tenv")


def test_env_profile_selects_section(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://a\ntoken = ta\n\n[dev]\nhost = http://dev\ntoken = tdev\n")
    monkeypatch.setenv("MODELFLEET_CONFIG_PROFILE", "dev")
    assert resolve_profile().token == "tdev"


def test_lone_env_token_overrides_profile_token(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://a\ntoken = ta\n")
    monkeypatch.setenv("MODELFLEET_TOKEN", "tenv")
    assert (resolve_profile().host, resolve_profile().token) == ("http://a", "tenv")


def test_profiles_do_not_inherit_from_default(clean_env: Path) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://a\ntoken = ta\n\n[half]\ntoken = th\n")
    with pytest.raises(CliError, match="no Modelfleet host configured"):
        resolve_profile("half")


def test_missing_profile_is_an_error_naming_the_file(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = http://a\ntoken = ta\n")
    code, out, err = run_cli(capsys, "serving-endpoints", "list", "-p", "nope")
    assert code == 1
    assert err == f"Error: profile 'nope' not found in {clean_env} or {clean_env.parent / 'databrickscfg'}\n"


def test_missing_env_profile_is_an_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_CONFIG_PROFILE", "ghost")
    with pytest.raises(CliError, match="profile 'ghost' not found"):
        resolve_profile()


def test_no_configuration_tells_how_to_get_one(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "serving-endpoints", "get", "churn")
    assert code == 1
    assert "make run" in err and "MODELFLEET_HOST" in err and "MODELFLEET_TOKEN" in err


def test_host_without_scheme_is_normalized(clean_env: Path) -> None:
    write_cfg(clean_env, "[DEFAULT]\nhost = localhost:8000\ntoken = t\n\n[remote]\nhost = mf.example.com/\ntoken = t\n")
    assert resolve_profile().host == "http://localhost:8000"
    assert resolve_profile("remote").host == "https://mf.example.com"


def test_write_default_profile_creates_private_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cfg"
    assert write_default_profile(path, "http://127.0.0.1:8000", "t1") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "[DEFAULT]\nhost = http://127.0.0.1:8000\ntoken = t1\n" == path.read_text()


def test_write_default_profile_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "cfg"
    write_default_profile(path, "http://first", "t1")
    assert write_default_profile(path, "http://second", "t2") is False
    assert "http://first" in path.read_text() and "second" not in path.read_text()


def test_write_default_profile_keeps_other_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cfg"
    path.write_text("# mine\n[prod]\nhost = https://prod\ntoken = tp")
    path.chmod(0o644)
    assert write_default_profile(path, "http://local", "tl") is True
    text = path.read_text()
    assert text.startswith("# mine\n[prod]\nhost = https://prod\ntoken = tp\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", str(path))
    for name in ("MODELFLEET_HOST", "MODELFLEET_TOKEN", "MODELFLEET_CONFIG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_profile().token == "tl"
    assert resolve_profile("prod").token == "tp"


# -- --json, durations ------------------------------------------------------------------------


def test_json_arg_inline_and_from_file(tmp_path: Path) -> None:
    path = tmp_path / "body.json"
    path.write_text('{"name": "churn"}')
    assert parse_json_arg('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_json_arg(f"@{path}") == {"name": "churn"}


def test_json_arg_invalid_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^invalid JSON in --json: Expecting"):
        parse_json_arg("{name: 1}")
    with pytest.raises(UsageError, match="cannot read --json file"):
        parse_json_arg(f"@{tmp_path / 'missing.json'}")


def test_invalid_json_exits_nonzero_before_any_request(server: CannedServer, capsys) -> None:
    code, out, err = run_cli(capsys, "serving-endpoints", "create", "--json", "{oops")
    assert code == 2
    assert err.startswith("Error: invalid JSON in --json: ")
    assert server.requests == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20m0s", 1200), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("45", 45)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "m5", "0", "-5", "5m 3s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration(text)


def test_format_duration_matches_go() -> None:
    assert [format_duration(s) for s in (1200, 90, 3600, 1.5)] == ["20m0s", "1m30s", "1h0m0s", "1.5s"]


def test_bad_timeout_is_a_usage_error(clean_env: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "serving-endpoints", "create", "x", "--timeout", "soon")
    assert code == 2 and "invalid duration" in err


# -- argument parsing -------------------------------------------------------------------------


def parse(*argv: str):
    from endpoints_app.cli.main import bind_positionals

    args, extras = build_parser().parse_known_args(list(argv))
    bind_positionals(args, extras)
    return args


@pytest.mark.parametrize(
    "verb", ["get", "get-status", "delete", "query", "logs", "get-open-api", "export-metrics", "get-metrics", "create"]
)
def test_name_positional_or_flag(verb: str) -> None:
    assert parse("serving-endpoints", verb, "churn").name == "churn"
    assert parse("serving-endpoints", verb, "--name", "churn").name == "churn"


def test_update_config_and_patch_take_name_either_way() -> None:
    for verb in ("update-config", "patch"):
        assert parse("serving-endpoints", verb, "churn", "--json", "{}").name == "churn"
        assert parse("serving-endpoints", verb, "--name", "churn", "--json", "{}").name == "churn"


def test_logs_and_build_logs_take_served_model() -> None:
    args = parse("serving-endpoints", "logs", "--name", "churn", "m-1")
    assert (args.name, args.served_model_name) == ("churn", "m-1")
    args = parse("serving-endpoints", "logs", "churn", "--debug", "m-1")
    assert (args.name, args.served_model_name) == ("churn", "m-1")
    assert parse("serving-endpoints", "logs", "churn").served_model_name is None
    args = parse("serving-endpoints", "build-logs", "-o", "json", "churn", "m-1")
    assert (args.name, args.served_model_name, args.output) == ("churn", "m-1", "json")


def test_global_flags_before_or_after_the_verb() -> None:
    before = parse("-o", "json", "-p", "dev", "--debug", "serving-endpoints", "get", "churn")
    after = parse("serving-endpoints", "get", "churn", "-o", "json", "--profile", "dev", "--debug")
    middle = parse("serving-endpoints", "-o", "json", "get", "churn")
    for args in (before, after):
        assert (args.output, args.profile, args.debug) == ("json", "dev", True)
    assert middle.output == "json"


def test_create_flags() -> None:
    args = parse(
        "serving-endpoints", "create", "ep", "--no-wait", "--timeout", "1m30s", "--description", "d",
        "--route-optimized", "--budget-policy-id", "bp",
    )  # fmt: skip
    assert (args.name, args.no_wait, args.timeout, args.description) == ("ep", True, 90, "d")
    assert (args.route_optimized, args.budget_policy_id) == (True, "bp")
    defaults = parse("serving-endpoints", "create", "--json", "{}")
    assert (defaults.name, defaults.no_wait, defaults.timeout) == (None, False, 1200)


def test_query_flags() -> None:
    args = parse(
        "serving-endpoints", "query", "--name", "chat", "--json", "{}", "--client-request-id", "r1",
        "--max-tokens", "10", "--n", "2", "--stream", "--temperature", "0.5",
    )  # fmt: skip
    assert (args.client_request_id, args.max_tokens, args.n, args.stream, args.temperature) == ("r1", 10, 2, True, 0.5)


def test_list_limit_and_models_verbs() -> None:
    assert parse("serving-endpoints", "list", "--limit", "3").limit == 3
    args = parse("models", "register", "./model", "--name", "churn", "--description", "d", "-o", "json")
    assert (args.path, args.name, args.description, args.output) == ("./model", "churn", "d", "json")
    assert parse("models", "list", "--name", "churn").name == "churn"


def test_server_command_flags() -> None:
    assert parse("up", "--no-setup").no_setup is True
    args = parse("runtime", "--agent-id", "a1", "--once")
    assert (args.agent_id, args.once) == ("a1", True)
    assert parse("setup").command == "setup"


@pytest.mark.parametrize(
    "argv",
    [
        ["serving-endpoints", "get"],
        ["serving-endpoints", "get", "a", "b"],
        ["serving-endpoints", "build-logs", "churn"],
        ["serving-endpoints", "update-config", "churn"],
        ["serving-endpoints", "list", "extra"],
        ["serving-endpoints", "get", "churn", "--bogus"],
        ["serving-endpoints", "nope"],
        ["serving-endpoints"],
        ["-o", "yaml", "serving-endpoints", "list"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], clean_env: Path, capsys) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys) -> None:
    assert main(["serving-endpoints", "create", "--help"]) == 0
    assert "--route-optimized" in capsys.readouterr().out


def test_bad_output_format_env(clean_env: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MODELFLEET_OUTPUT_FORMAT", "yaml")
    assert main(["serving-endpoints", "list"]) == 2


def test_update_config_body_unwraps_a_create_document() -> None:
    doc = json.dumps({"name": "churn", "config": {"name": "churn", "served_entities": [{"entity_name": "m"}]}})
    name, body, ignored = update_config_body(None, doc)
    assert (name, body, ignored) == ("churn", {"served_entities": [{"entity_name": "m"}]}, [])
    with pytest.raises(UsageError, match="differs"):
        update_config_body("other", doc)
    assert update_config_body("ep", '{"served_entities": []}') == ("ep", {"served_entities": []}, [])


def test_cli_does_not_import_django_or_requests_for_help() -> None:
    code = (
        "import sys; from endpoints_app.cli.main import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'requests')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# -- text rendering ---------------------------------------------------------------------------


def test_timestamps_render_as_utc_iso() -> None:
    assert render.timestamp(1788718020000) == "2026-09-06T18:07:00Z"
    assert render.timestamp("1788718020000") == "2026-09-06T18:07:00Z"
    assert render.timestamp(None) == "-"


def test_endpoint_summary_text() -> None:
    text = render.endpoint_summary(sample_endpoint("IN_PROGRESS", pending_config=pending_config()))
    lines = text.splitlines()
    assert "Name:           churn" in lines
    assert "ID:             8f1c2b7e9d0a4c55a3e1b2c3d4e5f601" in lines
    assert "State:          READY (config update: IN_PROGRESS)" in lines
    assert "Creator:        alice@example.com" in lines
    assert "Created:        2026-09-06T18:07:00Z" in lines
    assert "Config version: 1" in lines
    assert "Tags:           team=ml" in lines
    assert "Pending config: version 2, started 2026-09-06T18:23:20Z" in lines
    active = next(line for line in lines if line.strip().startswith("churn_model-1") and "DEPLOYMENT_READY" in line)
    assert "main.ml.churn_model v1" in active and "Small CPU scale-to-zero" in active
    assert any(line.split() == ["churn_model-1", "100%"] for line in lines)
    pending = next(line for line in lines if "churn_model-2" in line and "DEPLOYMENT_CREATING" in line)
    assert "main.ml.churn_model v2" in pending


def test_endpoint_table_text() -> None:
    external = sample_endpoint(name="gpt", creator="bob@example.com", state={"ready": "NOT_READY"})
    external["config"] = {
        "served_entities": [{"name": "gpt-4o", "external_model": {"provider": "openai", "name": "gpt-4o"}}]
    }
    lines = render.endpoint_table([sample_endpoint(), external]).splitlines()
    assert lines[0].split("  ")[0] == "NAME"
    assert [h for h in ("NAME", "STATE", "CONFIG UPDATE", "SERVED ENTITIES", "CREATOR") if h in lines[0]] == [
        "NAME", "STATE", "CONFIG UPDATE", "SERVED ENTITIES", "CREATOR",
    ]  # fmt: skip
    assert lines[1].split() == [
        "churn", "READY", "NOT_UPDATING", "churn_model-1", "(main.ml.churn_model", "v1)", "alice@example.com",
    ]  # fmt: skip
    assert "gpt-4o (external: openai/gpt-4o)" in lines[2] and "NOT_READY" in lines[2]


def test_status_document() -> None:
    status = render.endpoint_status(sample_endpoint("IN_PROGRESS", pending_config=pending_config()))
    assert status["name"] == "churn"
    assert status["state"] == {"ready": "READY", "config_update": "IN_PROGRESS"}
    assert [e["name"] for e in status["served_entities"]] == ["churn_model-1", "churn_model-2"]
    text = render.status_text(status).splitlines()
    assert text[0] == "READY  IN_PROGRESS"
    assert text[-1].split() == ["churn_model-2", "DEPLOYMENT_CREATING", "-"]


# -- model archives ---------------------------------------------------------------------------


def make_model_dir(root: Path) -> Path:
    model = root / "model"
    (model / "artifacts" / "nested").mkdir(parents=True)
    (model / "code").mkdir()
    (model / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    (model / "conda.yaml").write_text("name: x\n")
    (model / "python_env.yaml").write_text("python: 3.11\n")
    (model / "requirements.txt").write_text("scikit-learn\n")
    (model / "model.pkl").write_bytes(b"\x80\x04pickle")
    (model / ".hidden").write_text("kept\n")
    (model / "artifacts" / "nested" / "weights.bin").write_bytes(os.urandom(2048))
    (model / "code" / "helpers.py").write_text("X = 1\n")
    return model


def test_archive_contains_every_file_with_relative_paths(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path)
    archive = build_model_archive(model)
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "model.pkl", ".hidden",
            "artifacts/nested/weights.bin", "code/helpers.py",
        }  # fmt: skip
        assert all(m.isfile() for m in members.values())
        weights = tar.extractfile("artifacts/nested/weights.bin")
        assert weights is not None
        assert weights.read() == (model / "artifacts" / "nested" / "weights.bin").read_bytes()


def test_archive_follows_no_symlink_out_of_the_model_dir(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    (model / "leak.txt").symlink_to(secret)
    (model / "outside_dir").symlink_to(tmp_path)
    (model / "alias.pkl").symlink_to(model / "model.pkl")
    archive = build_model_archive(model)
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        names = tar.getnames()
        alias = tar.extractfile("alias.pkl")
        assert alias is not None and alias.read() == b"\x80\x04pickle"
    assert "leak.txt" not in names and not any(n.startswith("outside_dir") for n in names)
    assert sorted(archive.skipped) == ["leak.txt", "outside_dir"]


def test_register_rejects_a_dir_without_mlmodel(server: CannedServer, tmp_path: Path, capsys) -> None:
    (tmp_path / "notamodel").mkdir()
    code, _, err = run_cli(capsys, "models", "register", str(tmp_path / "notamodel"), "--name", "churn")
    assert code != 0 and "no MLmodel file" in err
    assert server.requests == []


# -- HTTP behaviour against canned responses --------------------------------------------------


EP = "/api/2.0/serving-endpoints/churn"


def test_requests_carry_bearer_token_and_errors_print_message(server: CannedServer, capsys) -> None:
    server.on("GET", EP, (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint 'churn' not found"}))
    code, out, err = run_cli(capsys, "serving-endpoints", "get", "churn")
    assert (code, out, err) == (1, "", "Error: Endpoint 'churn' not found\n")
    assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_debug_adds_error_code_and_status(server: CannedServer, capsys) -> None:
    server.on("GET", EP, (409, {"error_code": "RESOURCE_CONFLICT", "message": "busy"}))
    code, _, err = run_cli(capsys, "--debug", "serving-endpoints", "get", "churn")
    assert code == 1
    assert "> GET " in err and "Bearer ***" in err and TOKEN not in err
    assert "Error: busy\nerror_code: RESOURCE_CONFLICT, HTTP status: 409\n" in err


def test_connection_refused_says_to_start_modelfleet(clean_env: Path, monkeypatch, capsys) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MODELFLEET_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MODELFLEET_TOKEN", TOKEN)
    code, _, err = run_cli(capsys, "serving-endpoints", "list")
    assert code == 1
    assert err == f"Error: cannot reach http://127.0.0.1:{port}: is Modelfleet running? (make run)\n"


def test_redirect_to_another_host_is_not_followed(server: CannedServer, capsys) -> None:
    server.on("GET", EP, (302, "", {"Location": "http://evil.example/steal"}))
    code, _, err = run_cli(capsys, "serving-endpoints", "get", "churn")
    assert code == 1 and "another host" in err
    assert len(server.requests) == 1


def test_list_text_json_and_limit(server: CannedServer, capsys) -> None:
    second = sample_endpoint(name="fraud")
    server.on("GET", "/api/2.0/serving-endpoints", (200, {"endpoints": [sample_endpoint(), second]}))
    code, out, _ = run_cli(capsys, "serving-endpoints", "list", "-o", "json")
    assert code == 0 and [e["name"] for e in json.loads(out)] == ["churn", "fraud"]
    code, out, _ = run_cli(capsys, "serving-endpoints", "list", "--limit", "1")  # text is JSON, as in Databricks
    assert code == 0 and [e["name"] for e in json.loads(out)] == ["churn"]
    code, out, _ = run_cli(capsys, "serving-endpoints", "list", "--limit", "1", "-o", "table")
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].startswith("churn")


def test_list_empty_response(server: CannedServer, capsys) -> None:
    server.on("GET", "/api/2.0/serving-endpoints", (200, {}))
    assert run_cli(capsys, "serving-endpoints", "list", "-o", "json")[1] == "[]\n"


def test_output_format_from_env(server: CannedServer, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MODELFLEET_OUTPUT_FORMAT", "json")
    server.on("GET", EP, (200, sample_endpoint()))
    assert json.loads(run_cli(capsys, "serving-endpoints", "get", "churn")[1])["id"] == sample_endpoint()["id"]


def test_names_are_url_encoded(server: CannedServer, capsys) -> None:
    run_cli(capsys, "serving-endpoints", "get", "a b/c")
    assert server.requests[0].path == "/api/2.0/serving-endpoints/a%20b%2Fc"


def test_get_status_json(server: CannedServer, capsys) -> None:
    server.on("GET", EP, (200, sample_endpoint()))
    code, out, _ = run_cli(capsys, "serving-endpoints", "get-status", "--name", "churn", "-o", "json")
    assert json.loads(out) == {
        "name": "churn",
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "served_entities": [
            {"name": "churn_model-1", "state": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}}
        ],
    }


def test_create_waits_until_not_updating(server: CannedServer, capsys) -> None:
    creating = sample_endpoint("IN_PROGRESS", "NOT_READY", pending_config=pending_config())
    server.on("POST", "/api/2.0/serving-endpoints", (200, creating))
    server.on("GET", EP, (200, creating), (200, sample_endpoint()))
    body = {"name": "churn", "config": {"served_entities": [{"entity_name": "main.ml.churn_model"}]}}
    code, out, err = run_cli(capsys, "serving-endpoints", "create", "--json", json.dumps(body), "-o", "json")
    assert code == 0
    assert server.paths() == ["POST /api/2.0/serving-endpoints", f"GET {EP}", f"GET {EP}"]
    assert server.requests[0].json() == body
    assert json.loads(out)["state"]["config_update"] == "NOT_UPDATING"
    assert err.count("current status: IN_PROGRESS (deploying: churn_model-2 DEPLOYMENT_CREATING)") == 1


def test_create_without_json_sends_name_and_flags(server: CannedServer, capsys) -> None:
    server.on("POST", "/api/2.0/serving-endpoints", (200, sample_endpoint("IN_PROGRESS")))
    code, out, _ = run_cli(
        capsys, "serving-endpoints", "create", "churn", "--no-wait", "--description", "d", "--route-optimized"
    )
    assert code == 0 and server.paths() == ["POST /api/2.0/serving-endpoints"]
    assert server.requests[0].json() == {"name": "churn", "description": "d", "route_optimized": True}
    assert json.loads(out) == sample_endpoint("IN_PROGRESS")
    code, out, _ = run_cli(capsys, "serving-endpoints", "create", "churn", "--no-wait", "-o", "table")
    assert "State:          READY (config update: IN_PROGRESS)" in out


def test_create_name_conflict_with_json(server: CannedServer, capsys, tmp_path: Path) -> None:
    body = tmp_path / "ep.json"
    body.write_text('{"name": "churn"}')
    code, _, err = run_cli(capsys, "serving-endpoints", "create", "--name", "other", "--json", f"@{body}")
    assert code != 0 and "differs" in err and server.requests == []
    server.on("POST", "/api/2.0/serving-endpoints", (200, sample_endpoint()))
    assert run_cli(capsys, "serving-endpoints", "create", "--name", "churn", "--json", f"@{body}", "--no-wait")[0] == 0


def test_update_failed_prints_reason_and_exits_1(server: CannedServer, capsys) -> None:
    failing = sample_endpoint(
        "UPDATE_FAILED", pending_config=pending_config("DEPLOYMENT_FAILED", "model failed to load: ImportError")
    )
    server.on("PUT", f"{EP}/config", (200, sample_endpoint("IN_PROGRESS", pending_config=pending_config())))
    server.on("GET", EP, (200, failing))
    config = {"served_entities": [{"entity_name": "main.ml.churn_model", "entity_version": "2"}]}
    code, out, err = run_cli(capsys, "serving-endpoints", "update-config", "churn", "--json", json.dumps(config))
    assert code == 1 and out == ""
    assert err.endswith("Error: update failed: churn_model-2: model failed to load: ImportError\n")
    assert server.requests[0].json() == config


def test_update_failed_prefers_endpoint_message(server: CannedServer, capsys) -> None:
    state = {"ready": "READY", "config_update": "UPDATE_FAILED", "config_update_message": "rollout deadline passed"}
    server.on("PUT", f"{EP}/config", (200, sample_endpoint("IN_PROGRESS")))
    server.on("GET", EP, (200, sample_endpoint(state=state, pending_config=pending_config())))
    code, _, err = run_cli(capsys, "serving-endpoints", "update-config", "--name", "churn", "--json", "{}")
    assert code == 1 and err.endswith("Error: update failed: rollout deadline passed\n")


def test_update_config_sends_config_contents_without_name(server: CannedServer, capsys, tmp_path: Path) -> None:
    doc = tmp_path / "updated.json"
    doc.write_text(json.dumps({"name": "churn", "config": {"name": "churn", "served_entities": []}}))
    server.on("PUT", f"{EP}/config", (200, sample_endpoint()))
    code, _, _ = run_cli(
        capsys, "serving-endpoints", "update-config", "--name", "churn", "--json", f"@{doc}", "--no-wait"
    )
    assert code == 0 and server.requests[0].json() == {"served_entities": []}


def test_wait_times_out(server: CannedServer, capsys) -> None:
    server.on("PUT", f"{EP}/config", (200, sample_endpoint("IN_PROGRESS")))
    server.on("GET", EP, (200, sample_endpoint("IN_PROGRESS")))
    code, _, err = run_cli(capsys, "serving-endpoints", "update-config", "churn", "--json", "{}", "--timeout", "300ms")
    assert code == 1 and err.endswith("Error: timed out after 0.3s waiting for churn\n")


def test_query_goes_to_invocations_without_api_prefix(server: CannedServer, capsys) -> None:
    server.on(
        "POST", "/serving-endpoints/churn/invocations", (200, {"predictions": [0, 1]}, {"served-model-name": "m"})
    )
    code, out, _ = run_cli(
        capsys, "serving-endpoints", "query", "--name", "churn", "--json", '{"inputs": [[1.0, 2.0]]}',
        "--max-tokens", "5", "--temperature", "0.2", "--client-request-id", "r1",
    )  # fmt: skip
    assert code == 0 and json.loads(out) == {"predictions": [0, 1]}
    assert server.requests[0].json() == {
        "inputs": [[1.0, 2.0]], "max_tokens": 5, "temperature": 0.2, "client_request_id": "r1",
    }  # fmt: skip


def test_logs_for_every_served_model(server: CannedServer, capsys) -> None:
    server.on("GET", EP, (200, sample_endpoint("IN_PROGRESS", pending_config=pending_config())))
    server.on("GET", f"{EP}/served-models/churn_model-1/logs", (200, {"logs": "one\n"}))
    server.on("GET", f"{EP}/served-models/churn_model-2/logs", (200, {"logs": "two\n"}))
    code, out, _ = run_cli(capsys, "serving-endpoints", "logs", "--name", "churn")
    assert code == 0
    assert out == "==> churn_model-1 <==\none\n\n==> churn_model-2 <==\ntwo\n"


def test_logs_and_build_logs_for_one_served_model(server: CannedServer, capsys) -> None:
    server.on("GET", f"{EP}/served-models/m-1/logs", (200, {"logs": "serving"}))
    server.on("GET", f"{EP}/served-models/m-1/build-logs", (200, {"logs": "building\n"}))
    assert json.loads(run_cli(capsys, "serving-endpoints", "logs", "churn", "m-1")[1]) == {"logs": "serving"}
    assert json.loads(run_cli(capsys, "serving-endpoints", "build-logs", "churn", "m-1")[1]) == {"logs": "building\n"}
    assert run_cli(capsys, "serving-endpoints", "logs", "churn", "m-1", "-o", "table")[1] == "serving\n"
    assert run_cli(capsys, "serving-endpoints", "build-logs", "churn", "m-1", "-o", "table")[1] == "building\n"


def test_patch_tags(server: CannedServer, capsys) -> None:
    server.on("PATCH", f"{EP}/tags", (200, {"tags": [{"key": "a", "value": "b"}]}))
    code, out, _ = run_cli(
        capsys,
        "serving-endpoints",
        "patch",
        "churn",
        "--json",
        '{"add_tags":[{"key":"a","value":"b"}],"delete_tags":["x"]}',
    )
    assert code == 0 and json.loads(out) == {"tags": [{"key": "a", "value": "b"}]}
    assert server.requests[0].json() == {"add_tags": [{"key": "a", "value": "b"}], "delete_tags": ["x"]}
    code, out, _ = run_cli(capsys, "serving-endpoints", "patch", "churn", "--json", "{}", "-o", "table")
    assert code == 0 and out.splitlines() == ["KEY  VALUE", "a    b"]


def test_metrics_and_openapi_print_raw_text(server: CannedServer, capsys) -> None:
    metrics = "# TYPE request_count_total gauge\nrequest_count_total 3\n"
    server.on("GET", f"{EP}/metrics", (200, metrics))
    server.on("GET", f"{EP}/openapi", (200, '{"openapi": "3.1.0"}'))
    assert run_cli(capsys, "serving-endpoints", "export-metrics", "churn")[1] == metrics
    assert run_cli(capsys, "serving-endpoints", "get-metrics", "--name", "churn")[1] == metrics
    assert server.requests[0].headers["Accept"] == "text/plain"
    assert run_cli(capsys, "serving-endpoints", "get-open-api", "churn")[1] == '{"openapi": "3.1.0"}\n'


def test_metrics_refuse_json_output(server: CannedServer, capsys) -> None:
    code, _, err = run_cli(capsys, "serving-endpoints", "export-metrics", "churn", "-o", "json")
    assert code == 1 and "json output not supported" in err and server.requests == []


def test_delete_prints_nothing(server: CannedServer, capsys) -> None:
    server.on("DELETE", EP, (200, {}))
    assert run_cli(capsys, "serving-endpoints", "delete", "--name", "churn") == (0, "", "")


def test_models_register_uploads_gzip_and_prints_version_last(server: CannedServer, tmp_path: Path, capsys) -> None:
    model = make_model_dir(tmp_path)
    upload = "/api/2.0/modelfleet/registered-models/upload"
    server.on("POST", upload, (200, {"name": "churn", "version": "3", "status": "READY"}))
    code, out, _ = run_cli(capsys, "models", "register", str(model), "--name", "churn", "--description", "d")
    assert code == 0
    assert out.splitlines() == ["Registered churn version 3", "3"]
    request = server.requests[0]
    assert request.query == {"name": ["churn"], "description": ["d"]}
    assert request.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(request.body), mode="r:gz") as tar:
        assert "MLmodel" in tar.getnames()


def test_models_list_table(server: CannedServer, capsys) -> None:
    models = {
        "registered_models": [
            {
                "name": "churn",
                "description": "",
                "creation_timestamp": 1788718020000,
                "last_updated_timestamp": 1788718020000,
                "versions": [
                    {
                        "version": "1",
                        "status": "READY",
                        "creation_timestamp": 1788718020000,
                        "source": "s",
                        "run_id": "",
                    },
                ],
            }
        ]
    }
    server.on("GET", "/api/2.0/modelfleet/registered-models", (200, models))
    code, out, _ = run_cli(capsys, "models", "list")
    assert code == 0 and [line.split() for line in out.splitlines()] == [
        ["MODEL", "VERSION", "STATUS", "CREATED"],
        ["churn", "1", "READY", "2026-09-06T18:07:00Z"],
    ]


def test_logs_keep_going_when_one_served_model_fails(server: CannedServer, capsys) -> None:
    server.on("GET", EP, (200, sample_endpoint("IN_PROGRESS", pending_config=pending_config())))
    server.on("GET", f"{EP}/served-models/churn_model-1/logs", (200, {"logs": "one\n"}))
    code, out, err = run_cli(capsys, "serving-endpoints", "logs", "churn")
    assert code == 1
    assert out == "==> churn_model-1 <==\none\n\n==> churn_model-2 <==\n"
    assert err.startswith("Error: no route GET")
