"""The runtime agent re-checks a replica's environment when it starts it, not only when the config was saved.

A config saved before the rules on ``environment_vars`` existed may carry ``LD_PRELOAD`` or
``PYTHONPATH``: the dynamic loader or the interpreter acts on those before the sandbox is in
place, so the agent refuses to start such a replica and names the variable.  Secret references
are read the way validation reads them (spaces around the braces allowed).
"""

from __future__ import annotations

import pytest

from endpoints_app.runtime.agent import replica_environment
from endpoints_app.services import secrets


@pytest.mark.parametrize("name", ["LD_PRELOAD", "ld_library_path", "PYTHONPATH", "PYTHONSTARTUP", "HTTPS_PROXY"])
def test_a_saved_loader_or_interpreter_variable_fails_the_start_naming_it(name: str) -> None:
    with pytest.raises(ValueError) as failure:
        replica_environment({"PLAIN": "ok", name: "/tmp/evil.so"})
    assert f"environment variable {name} may not be set" in str(failure.value)
    assert "/tmp/evil.so" not in str(failure.value)


def test_plain_values_pass_through() -> None:
    assert replica_environment({"PLAIN": "a value", "COUNT": 3}) == {"PLAIN": "a value", "COUNT": "3"}


@pytest.mark.django_db
def test_a_reference_with_spaces_around_it_is_resolved_not_passed_literally(user) -> None:  # type: ignore[no-untyped-def]
    secrets.create_scope(actor=user, scope="replica-env")
    secrets.put_secret(actor=user, scope="replica-env", key="api", string_value="sk-resolved")
    assert replica_environment(
        {"API_KEY": " {{secrets/replica-env/api}}\n", "OTHER": "{{secrets/replica-env/api}}"}
    ) == {
        "API_KEY": "sk-resolved",
        "OTHER": "sk-resolved",
    }
    with pytest.raises(ValueError, match=r"environment variable MISSING: cannot read"):
        replica_environment({"MISSING": " {{secrets/replica-env/nope}} "})
