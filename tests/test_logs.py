"""Log polling (files → LogLine rows), retention, and the log-lines API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from endpoints_app.models import Deployment, Endpoint, LogCursor, LogLine, PollKind, PollRun, PollTarget
from endpoints_app.monitoring import logs
from endpoints_app.monitoring.polling import ensure_targets, run_poll
from endpoints_app.runtime.layout import log_path
from endpoints_app.services import rollouts
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db

URL = "/api/2.0/modelfleet/serving-endpoints/{}/log-lines"

SERVER_LOG = """\
2026-11-27 04:44:36,010 INFO [iris-1 replica 0] loading model
2026-11-27 04:44:39,231 INFO [iris-1 replica 0] model loaded in 2.42 s; ready
2026-11-27 04:44:40,500 ERROR [iris-1 replica 1] prediction failed
Traceback (most recent call last):
  File "server.py", line 10, in predict
ValueError: bad input
2026-11-27 04:44:41 runtime: replica 1 did not become ready within 120s; killed
"""


@pytest.fixture(autouse=True)
def runtime_dir(settings, tmp_path: Path) -> Path:
    """A private runtime folder: database ids repeat across tests, log files must not."""
    settings.RUNTIME_DIR = tmp_path / "runtime"
    return settings.RUNTIME_DIR


def deploy(api, *entities: tuple[str, str], name: str = "logs-ep", routes=None) -> Endpoint:
    """Create an endpoint and let the backend create its deployments (the runtime is not needed)."""
    response = api.post("/api/2.0/serving-endpoints", endpoint_body(name, *entities, routes=routes), format="json")
    assert response.status_code == 200, response.content
    endpoint = Endpoint.objects.get(name=name)
    rollouts.start_rollout(endpoint_id=endpoint.id)
    return endpoint


def write_log(deployment: Deployment, kind: str, text: str, *, mode: str = "a") -> None:
    path = log_path(deployment.id, kind)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as fh:
        fh.write(text)


def stored(kind: str = "server") -> list[tuple]:
    return list(LogLine.objects.filter(kind=kind).order_by("ts", "id").values_list("ts", "level", "replica", "message"))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def endpoint(api, registered_models) -> Endpoint:
    return deploy(api, (registered_models["iris"], "1"))


@pytest.fixture
def deployment(endpoint: Endpoint) -> Deployment:
    return Deployment.objects.get(endpoint=endpoint)


# --- parsing and polling ------------------------------------------------------------------------


def test_poll_stores_each_line_with_its_time_level_and_replica(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    logs.poll_logs(endpoint)
    lines = stored()
    assert lines[0] == (at("2026-11-27 04:44:36.010"), "INFO", 0, "loading model")
    assert lines[1] == (at("2026-11-27 04:44:39.231"), "INFO", 0, "model loaded in 2.42 s; ready")
    assert lines[2] == (at("2026-11-27 04:44:40.500"), "ERROR", 1, "prediction failed")
    row = LogLine.objects.first()
    assert (row.endpoint_id, row.deployment_id, row.served_entity_name) == (endpoint.id, deployment.id, "iris-1")


def test_a_traceback_takes_the_time_level_and_replica_of_the_line_before_it(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    logs.poll_logs(endpoint)
    error_ts = at("2026-11-27 04:44:40.500")
    assert stored()[3:6] == [
        (error_ts, "ERROR", 1, "Traceback (most recent call last):"),
        (error_ts, "ERROR", 1, '  File "server.py", line 10, in predict'),
        (error_ts, "ERROR", 1, "ValueError: bad input"),
    ]
    # The (ts, id) order keeps a traceback under its line.
    assert [m for *_, m in stored()][2:4] == ["prediction failed", "Traceback (most recent call last):"]


def test_runtime_notes_are_warnings_about_their_replica(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    logs.poll_logs(endpoint)
    assert stored()[-1] == (
        at("2026-11-27 04:44:41"),
        "WARNING",
        1,
        "runtime: replica 1 did not become ready within 120s; killed",
    )


def test_build_log_levels_come_from_the_word_after_the_time(endpoint, deployment):
    write_log(
        deployment,
        "build",
        "2026-11-27 04:44:34 Resolving model 'main.default.iris' version 1\n"
        "2026-11-27 04:44:35 WARNING the model was logged with Python 3.10\n"
        "2026-11-27 04:44:35 ERROR could not copy the model files: disk full\n",
    )
    logs.poll_logs(endpoint)
    assert [(level, replica, message) for _, level, replica, message in stored("build")] == [
        ("INFO", None, "Resolving model 'main.default.iris' version 1"),
        ("WARNING", None, "the model was logged with Python 3.10"),
        ("ERROR", None, "could not copy the model files: disk full"),
    ]
    assert stored("server") == []


def test_a_second_poll_adds_only_the_new_lines(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    logs.poll_logs(endpoint)
    logs.poll_logs(endpoint)
    assert LogLine.objects.count() == 7
    write_log(deployment, "server", "2026-11-27 04:45:00,000 INFO [iris-1 replica 0] request served\n")
    logs.poll_logs(endpoint)
    assert LogLine.objects.count() == 8
    assert stored()[-1][3] == "request served"
    cursor = LogCursor.objects.get(deployment=deployment, kind="server")
    assert cursor.offset == log_path(deployment.id, "server").stat().st_size


def test_a_traceback_read_in_a_later_poll_joins_its_stored_line(endpoint, deployment):
    write_log(deployment, "server", "2026-11-27 04:44:40,500 ERROR [iris-1 replica 2] crashed\n")
    logs.poll_logs(endpoint)
    write_log(deployment, "server", "Traceback (most recent call last):\nKeyError: 'x'\n")
    logs.poll_logs(endpoint)
    assert stored()[1:] == [
        (at("2026-11-27 04:44:40.500"), "ERROR", 2, "Traceback (most recent call last):"),
        (at("2026-11-27 04:44:40.500"), "ERROR", 2, "KeyError: 'x'"),
    ]


def test_an_orphan_continuation_line_gets_the_poll_time_and_no_level(endpoint, deployment):
    write_log(deployment, "server", "raw output before any logging\n")
    before = timezone.now()
    logs.poll_logs(endpoint)
    ((ts, level, replica, message),) = stored()
    assert before <= ts <= timezone.now()
    assert (level, replica, message) == ("", None, "raw output before any logging")


def test_a_log_rewritten_shorter_is_read_again_from_the_start(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    logs.poll_logs(endpoint)
    write_log(deployment, "server", "2026-11-28 00:00:00,000 INFO [iris-1 replica 0] restarted\n", mode="w")
    logs.poll_logs(endpoint)
    assert stored()[-1][3] == "restarted"
    assert LogLine.objects.count() == 8
    assert (
        LogCursor.objects.get(deployment=deployment, kind="server").offset
        == log_path(deployment.id, "server").stat().st_size
    )


def test_a_partial_last_line_is_stored_once_it_is_complete(endpoint, deployment):
    write_log(deployment, "server", "2026-11-27 04:44:36,010 INFO [iris-1 replica 0] first\n2026-11-27 04:44:37,0")
    logs.poll_logs(endpoint)
    assert [m for *_, m in stored()] == ["first"]
    write_log(deployment, "server", "00 INFO [iris-1 replica 0] second\n")
    logs.poll_logs(endpoint)
    assert stored()[-1] == (at("2026-11-27 04:44:37"), "INFO", 0, "second")


def test_lines_longer_than_16_kb_are_truncated_with_a_marker(endpoint, deployment):
    write_log(deployment, "server", "2026-11-27 04:44:36,010 INFO [iris-1 replica 0] " + "x" * 20_000 + "\n")
    logs.poll_logs(endpoint)
    message = LogLine.objects.get().message
    assert message.startswith("x" * logs.MAX_LINE_CHARS)
    assert message.endswith("…[truncated 3616 characters]")


def test_nul_bytes_and_bad_utf8_do_not_break_the_poll(endpoint, deployment):
    path = log_path(deployment.id, "server")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"2026-11-27 04:44:36,010 INFO [iris-1 replica 0] a\x00b \xff\n")
    logs.poll_logs(endpoint)
    assert LogLine.objects.get().message == "a\ufffdb \ufffd"


def test_timestamps_with_an_offset_are_stored_in_utc():
    line = logs.parse_line("2026-11-27T05:44:36.5+01:00 DEBUG hello", previous=None, now=timezone.now())
    assert (line.ts, line.level, line.message) == (at("2026-11-27 04:44:36.5"), "DEBUG", "hello")


def test_a_recently_stopped_deployment_is_still_read_and_an_old_one_is_not(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    Deployment.objects.filter(id=deployment.id).update(stopped_at=timezone.now() - timedelta(seconds=30))
    logs.poll_logs(endpoint)
    assert LogLine.objects.count() == 7
    write_log(deployment, "server", "2026-11-27 04:50:00,000 INFO [iris-1 replica 0] late line\n")
    Deployment.objects.filter(id=deployment.id).update(stopped_at=timezone.now() - timedelta(hours=1))
    logs.poll_logs(endpoint)
    assert LogLine.objects.count() == 7


def test_a_chunk_another_poll_already_stored_is_not_stored_twice(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    stale = logs.cursors_for([deployment])[(deployment.id, "server")]
    logs.poll_logs(endpoint)
    duplicate = LogLine(endpoint=endpoint, served_entity_name="iris-1", kind="server", ts=timezone.now(), message="dup")
    assert logs.store(stale, 999, [duplicate], now=timezone.now()) is False
    assert LogLine.objects.count() == 7
    assert LogCursor.objects.get(id=stale.id).offset == len(SERVER_LOG.encode())


def test_an_unreadable_log_fails_the_poll_but_the_other_logs_are_still_stored(endpoint, deployment):
    log_path(deployment.id, "server").mkdir(parents=True)  # a folder where the file should be
    write_log(deployment, "build", "2026-11-27 04:44:34 Resolving model\n")
    with pytest.raises(IsADirectoryError):
        logs.poll_logs(endpoint)
    assert [m for *_, m in stored("build")] == ["Resolving model"]


def test_the_poll_framework_runs_the_log_poll_and_records_the_run(endpoint, deployment):
    write_log(deployment, "server", SERVER_LOG)
    ensure_targets()
    target = PollTarget.objects.get(endpoint=endpoint, kind=PollKind.LOGS)
    assert run_poll(target.id) is True
    run = PollRun.objects.get(target=target)
    assert (run.ok, run.error) == (True, "")
    assert LogLine.objects.filter(endpoint=endpoint).count() == 7


# --- retention ----------------------------------------------------------------------------------


def test_retention_deletes_only_lines_older_than_the_retention(settings, endpoint, deployment):
    settings.LOG_RETENTION_DAYS = 7
    now = timezone.now()
    for days in (30, 8, 6, 0):
        LogLine.objects.create(
            endpoint=endpoint,
            served_entity_name="iris-1",
            kind="server",
            ts=now - timedelta(days=days),
            message=f"{days}",
        )
    assert logs.prune_logs() == 2
    assert sorted(LogLine.objects.values_list("message", flat=True)) == ["0", "6"]


def test_retention_deletes_the_cursors_of_deployments_stopped_a_day_ago(endpoint, deployment):
    logs.cursors_for([deployment])
    Deployment.objects.filter(id=deployment.id).update(stopped_at=timezone.now() - timedelta(hours=2))
    logs.prune_logs()
    assert LogCursor.objects.filter(deployment=deployment).count() == 2
    Deployment.objects.filter(id=deployment.id).update(stopped_at=timezone.now() - timedelta(days=2))
    logs.prune_logs()
    assert not LogCursor.objects.filter(deployment=deployment).exists()


# --- the log-lines API --------------------------------------------------------------------------


@pytest.fixture
def polled(endpoint, deployment) -> Endpoint:
    """Ten numbered lines a second apart (levels cycling), plus the build log."""
    levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    write_log(
        deployment,
        "server",
        "".join(
            f"2026-11-27 04:44:{i:02d},000 {levels[i % 5]} [iris-1 replica {i % 2}] line {i} Hello\n" for i in range(10)
        ),
    )
    write_log(deployment, "build", "2026-11-27 04:44:00 Build finished in 1.0s\n")
    logs.poll_logs(endpoint)
    return endpoint


def get_lines(api, name: str = "logs-ep", **params) -> dict:
    response = api.get(URL.format(name), params)
    assert response.status_code == 200, response.content
    return response.json()


def messages(body: dict) -> list[str]:
    return [line["message"] for line in body["lines"]]


def test_the_default_is_the_newest_server_lines_first(api, polled):
    body = get_lines(api)
    assert messages(body)[:3] == ["line 9 Hello", "line 8 Hello", "line 7 Hello"]
    assert body["lines"][0] == {
        "ts": int(at("2026-11-27 04:44:09").timestamp() * 1000),
        "level": "CRITICAL",
        "served_model_name": "iris-1",
        "replica": 1,
        "kind": "server",
        "message": "line 9 Hello",
    }
    assert body["next_page_token"] is None


def test_order_asc_reads_from_the_oldest_and_kind_selects_the_build_log(api, polled):
    assert messages(get_lines(api, order="asc", limit=2)) == ["line 0 Hello", "line 1 Hello"]
    assert messages(get_lines(api, kind="build")) == ["Build finished in 1.0s"]


def test_search_is_a_case_insensitive_substring(api, polled):
    assert messages(get_lines(api, q="LINE 3 hello")) == ["line 3 Hello"]
    assert get_lines(api, q="nowhere")["lines"] == []


def test_level_is_a_minimum(api, polled):
    body = get_lines(api, level="error")
    assert {line["level"] for line in body["lines"]} == {"ERROR", "CRITICAL"}
    assert len(body["lines"]) == 4


def test_since_is_inclusive_and_until_exclusive(api, polled):
    since = int(at("2026-11-27 04:44:03").timestamp() * 1000)
    until = int(at("2026-11-27 04:44:06").timestamp() * 1000)
    assert messages(get_lines(api, since=since, until=until, order="asc")) == [
        "line 3 Hello",
        "line 4 Hello",
        "line 5 Hello",
    ]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pages_cover_every_line_once_even_when_lines_share_a_time(api, polled, deployment, order):
    write_log(deployment, "server", "Traceback\n  frame\nError\n")  # three more lines at 04:44:09
    logs.poll_logs(polled)
    seen: list[str] = []
    params: dict = {"limit": 3, "order": order}
    for _ in range(10):
        body = get_lines(api, **params)
        seen += messages(body)
        if body["next_page_token"] is None:
            break
        params["page_token"] = body["next_page_token"]
    expected = [m for *_, m in stored()]
    assert seen == (expected[::-1] if order == "desc" else expected)
    assert len(seen) == 13


def test_lines_of_several_served_models_are_merged_and_can_be_filtered(api, registered_models):
    iris = registered_models["iris"]
    endpoint = deploy(api, (iris, "1"), (iris, "2"), name="ab", routes=[("iris-1", 50), ("iris-2", 50)])
    one, two = Deployment.objects.filter(endpoint=endpoint).order_by("served_entity_name")
    write_log(
        one,
        "server",
        "2026-11-27 04:44:01,000 INFO [iris-1 replica 0] a\n2026-11-27 04:44:03,000 INFO [iris-1 replica 0] c\n",
    )
    write_log(
        two,
        "server",
        "2026-11-27 04:44:02,000 INFO [iris-2 replica 0] b\n2026-11-27 04:44:04,000 INFO [iris-2 replica 0] d\n",
    )
    logs.poll_logs(endpoint)
    body = get_lines(api, "ab", order="asc")
    assert [(line["served_model_name"], line["message"]) for line in body["lines"]] == [
        ("iris-1", "a"),
        ("iris-2", "b"),
        ("iris-1", "c"),
        ("iris-2", "d"),
    ]
    assert messages(get_lines(api, "ab", served_model="iris-2")) == ["d", "b"]
    assert get_lines(api, "ab", served_model="nope")["lines"] == []


def test_the_query_count_does_not_grow_with_the_lines(api, polled, django_assert_max_num_queries):
    # 6 for the read, 3 for the access check (the caller's role, workspace grants and endpoint grants).
    with django_assert_max_num_queries(9):
        body = get_lines(api, limit=2000, q="hello", level="DEBUG")
    assert len(body["lines"]) == 10


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"kind": "stdout"}, "kind"),
        ({"order": "up"}, "order"),
        ({"level": "LOUD"}, "level"),
        ({"limit": "0"}, "limit"),
        ({"limit": "2001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "-5"}, "since"),
        ({"until": "99999999999999999999"}, "until"),
        ({"since": "2000", "until": "1000"}, "until"),
        ({"page_token": "garbage!"}, "page_token"),
        ({"q": "x" * 1001}, "q"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(api, endpoint, params, named):
    response = api.get(URL.format("logs-ep"), params)
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert named in body["message"]


def test_a_page_token_from_the_other_order_is_a_400(api, polled):
    token = get_lines(api, limit=1)["next_page_token"]
    response = api.get(URL.format("logs-ep"), {"page_token": token, "order": "asc"})
    assert response.status_code == 400
    assert "page_token" in response.json()["message"]


def test_an_unknown_endpoint_is_a_404(api):
    response = api.get(URL.format("nope"))
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_without_a_token_it_is_a_401(anon, polled):
    response = anon.get(URL.format("logs-ep"))
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"


def test_other_methods_are_405(api, polled):
    assert api.post(URL.format("logs-ep"), {}, format="json").status_code == 405


def test_the_databricks_logs_route_still_reads_the_file(api, polled):
    response = api.get("/api/2.0/serving-endpoints/logs-ep/served-models/iris-1/logs")
    assert response.status_code == 200
    assert "line 9 Hello" in response.json()["logs"]
