"""A model upload holding a link is refused before anything reaches the registry.

This Python's tarfile (3.11.7) predates the 2025 fixes to its ``data`` filter, and the registry
copies models with ``copytree(symlinks=False)``, which follows links: an archive whose
``weights.pkl`` links to ``DATA_DIR/secrets_key`` would register the control plane's key as a
model file, which any replica of it (and anyone who downloads it) could then read.  Every archive
below is the control model plus one hostile member; the control itself registers.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from django.conf import settings

from endpoints_app import encryption, registry
from endpoints_app.api.views import _refuse_links
from endpoints_app.errors import InvalidParameterValue
from tests import model_fixtures

pytestmark = pytest.mark.django_db

UPLOAD = "/api/2.0/modelfleet/registered-models/upload"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return model_fixtures.save_constant_model(tmp_path_factory.mktemp("upload") / "model", "a")


def archive(model: Path, extra: tarfile.TarInfo | None = None) -> bytes:
    """The model folder as a gzipped tar (as ``modelfleet models register`` sends it), plus ``extra``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model, arcname="model")
        if extra is not None:
            tar.addfile(extra)
    return buffer.getvalue()


def member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"model/{name}")
    info.type = kind
    info.linkname = linkname
    return info


def upload(api, body: bytes, name: str):  # type: ignore[no-untyped-def]
    return api.generic("POST", f"{UPLOAD}?name={name}", body, content_type="application/gzip")


def secrets_key() -> Path:
    encryption.encrypt(b"make sure the secrets key file exists")
    path = Path(settings.DATA_DIR) / "secrets_key"
    assert path.is_file()
    return path


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("absolute symlink", lambda: member("weights.pkl", tarfile.SYMTYPE, str(secrets_key()))),
        (
            "relative symlink out",
            lambda: member("weights.pkl", tarfile.SYMTYPE, "../../../../../../" + str(secrets_key())),
        ),
        ("symlink inside", lambda: member("weights.pkl", tarfile.SYMTYPE, "MLmodel")),
        ("hard link", lambda: member("weights.pkl", tarfile.LNKTYPE, "model/MLmodel")),
        ("fifo", lambda: member("weights.pkl", tarfile.FIFOTYPE)),
    ],
)
def test_an_archive_with_a_link_or_special_file_is_refused(api, model_dir, case, extra) -> None:  # type: ignore[no-untyped-def]
    name = f"main.default.upload-{case.replace(' ', '-')}"
    response = upload(api, archive(model_dir, extra()), name)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "'model/weights.pkl'" in body["message"] and "only folders and regular files" in body["message"]
    assert registry.list_registered_models(name) == []


def test_the_same_archive_without_the_link_registers(api, model_dir) -> None:  # type: ignore[no-untyped-def]
    name = "main.default.upload-control"
    response = upload(api, archive(model_dir), name)
    assert response.status_code == 200, response.content
    assert response.json()["name"] == name
    registry.client().delete_registered_model(name)  # the registry outlives the test database


def test_what_is_on_disk_after_extraction_is_checked_too(tmp_path: Path) -> None:
    """The second line: links that reached the disk anyway (a tarfile bug) are refused by lstat."""
    (tmp_path / "MLmodel").write_text("flavors: {}")
    _refuse_links(tmp_path)  # regular files and folders only: fine
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("control-plane data")
    cases = {
        "a symbolic link": lambda p: p.symlink_to(outside),
        "a hard link": lambda p: os.link(outside, p),
        "a special file": lambda p: os.mkfifo(p),
    }
    for problem, make in cases.items():
        target = tmp_path / "sub" / "weights.pkl"
        target.parent.mkdir(exist_ok=True)
        make(target)
        with pytest.raises(InvalidParameterValue, match=f"holds {problem}, 'sub/weights.pkl'"):
            _refuse_links(tmp_path)
        target.unlink()
    (tmp_path / "linked-folder").symlink_to(tmp_path.parent, target_is_directory=True)
    with pytest.raises(InvalidParameterValue, match="holds a symbolic link, 'linked-folder'"):
        _refuse_links(tmp_path)
