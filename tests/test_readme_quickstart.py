"""The README's quick start, run as written against a live stack.

Every fenced ``bash`` and ``python`` block of the README's "Quick start" section (up to the next
``## `` heading) is read from README.md and run in order, in one working folder, as a newcomer
would after ``make run``. What the test fills in, and nothing else:

- ``make run`` is the module's stack (``modelfleet up`` on the test database, see tests/stack.py),
  with the demo model registered the way ``make run``'s setup registers it
  (``endpoints_app.setup.ensure_demo_model``). The block that holds ``make run`` and ``make test``
  is not run (the suite is what ``make test`` runs); the test checks that the Makefile has both
  targets.
- The token ``make run`` prints is an admin's token made by the ``e2e_token`` fixture: the
  placeholder ``<token printed by make run>`` is replaced by it in the text of each block.
- The host ``http://127.0.0.1:8000`` is replaced by the stack's URL in the text of each block.
- The ``DEFAULT`` profile ``make run`` writes to ``~/.modelfleetcfg`` is written, by the same
  function, into a private ``$HOME``; ``modelfleet`` is on ``PATH`` as ``source
  .venv/bin/activate`` puts it. No ``MODELFLEET_*`` or ``DATABRICKS_*`` variable reaches the
  blocks, so the CLI finds its host and token only through that profile.
- ``./path/to/mlflow-model`` is made in the working folder (an MLflow scikit-learn model) before
  the blocks run.

``bash`` blocks run with ``bash -euo pipefail``, so each command in them must succeed; ``python``
blocks with this interpreter. Each block must exit 0, and the test then checks the facts its
commands promise (the endpoint is READY, queries answer predictions, the split serves both
versions, …); it checks facts in the output, not its exact layout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from endpoints_app.cli.config import write_default_profile
from tests.model_fixtures import save_iris_model
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
README_HOST = "http://127.0.0.1:8000"
TOKEN_PLACEHOLDER = "<token printed by make run>"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)
# The demo model answers class 0 (setosa) for the quick start's flower.
SETOSA = [0]


def quick_start_blocks(readme: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the "Quick start" section, in order."""
    start = readme.index("\n## Quick start\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end != -1 else len(readme)]
    return [(lang, code) for lang, code in BLOCK.findall(section)]


def is_make_block(code: str) -> bool:
    lines = [line.split("#", 1)[0].strip() for line in code.splitlines()]
    return all(not line or line.startswith("make ") for line in lines)


def fill_in(code: str, stack: Stack, token: str) -> str:
    return code.replace(README_HOST, stack.url).replace(TOKEN_PLACEHOLDER, token)


def block_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "DATABRICKS_")) and k != "TOKEN"}
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    return env


def run_block(lang: str, code: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def json_documents(text: str) -> list:
    """Every JSON value printed in ``text`` (the CLI prints one per command), in order."""
    decoder = json.JSONDecoder()
    found, i = [], 0
    while i < len(text):
        if text[i] in "[{":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def check_facts(code: str, out: str, sdk) -> list[str]:  # type: ignore[no-untyped-def]
    """What the block's commands promise, checked in its output (and on the server); returns what was checked."""
    checked = []
    documents = json_documents(out)
    if "serving-endpoints create" in code:
        created = [d for d in documents if isinstance(d, dict) and d.get("name") == "my-model-endpoint"]
        assert created and created[0]["state"]["ready"] == "READY", out
        checked.append("create: READY")
    if "serving-endpoints query" in code or "/invocations" in code:
        assert {"predictions": SETOSA} in documents, out
        checked.append("query: predictions")
    if "serving-endpoints list" in code:
        lists = [d for d in documents if isinstance(d, list)]
        assert any(e.get("name") == "my-model-endpoint" for d in lists for e in d if isinstance(e, dict)), out
        checked.append("list: the endpoint")
    if "serving-endpoints logs" in code:
        # The served model's log, under its name (or as the {"logs": …} of one served model).
        assert "==> demo_classifier-1 <==" in out or any(isinstance(d, dict) and "logs" in d for d in documents), out
        checked.append("logs")
    if "serving-endpoints update-config" in code:
        served = {
            e["name"] for d in documents if isinstance(d, dict) for e in d.get("config", {}).get("served_entities", [])
        }
        assert {"demo_classifier-1", "demo_classifier-2"} <= served, out
        checked.append("update-config: both versions served")
    if "serving-endpoints delete" in code:
        assert "my-model-endpoint" not in [e.name for e in sdk.serving_endpoints.list()]
        checked.append("delete: gone")
    if "models register" in code:
        assert any(line.strip().isdigit() for line in out.splitlines()), out
        assert "main.default.churn" in out, out
        checked.append("models: registered and listed")
    if "create_and_wait" in code:
        assert "predictions=[0]" in out, out
        assert sdk.serving_endpoints.get("churn").state.ready.value == "READY"
        checked += ["sdk: created and queried", "query: predictions"]
    return checked


def test_the_readme_quick_start_runs_as_written(stack, e2e_token, sdk, tmp_path):
    from endpoints_app.setup import ensure_demo_model

    ensure_demo_model()
    blocks = quick_start_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 5, blocks

    make_blocks = [code for lang, code in blocks if lang == "bash" and is_make_block(code)]
    assert len(make_blocks) == 1 and "make run" in make_blocks[0] and "make test" in make_blocks[0]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    write_default_profile(home / ".modelfleetcfg", stack.url, e2e_token)
    save_iris_model(work / "path" / "to" / "mlflow-model")
    env = block_env(home)

    checked: list[str] = []
    try:
        for lang, code in blocks:
            assert lang in ("bash", "python"), f"a quick-start block in {lang!r} that this test cannot run"
            if lang == "bash" and is_make_block(code):
                continue
            done = run_block(lang, fill_in(code, stack, e2e_token), cwd=work, env=env)
            assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            checked += check_facts(code, done.stdout, sdk)
    finally:
        for name in ("my-model-endpoint", "churn"):
            if name in [e.name for e in sdk.serving_endpoints.list()]:
                sdk.serving_endpoints.delete(name)
    wanted = {"create: READY", "update-config: both versions served", "delete: gone", "sdk: created and queried"}
    assert wanted <= set(checked), checked
    assert checked.count("query: predictions") == 3, checked  # the CLI, the SDK's print and curl
