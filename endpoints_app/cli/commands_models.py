"""``modelfleet models``: upload MLflow model directories to the registry and list what is there."""

from __future__ import annotations

import argparse
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context
from endpoints_app.cli.errors import EXIT_OK, UsageError

REGISTERED_MODELS_PATH = "/api/2.0/modelfleet/registered-models"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "models",
        parents=[common],
        help="register MLflow models and list registered models",
        description="Register MLflow models with Modelfleet and list them.",
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser(
        "register",
        parents=[common],
        help="upload an MLflow model directory as a new version",
        description="Upload an MLflow model directory (one with an MLmodel file) as a new model version. "
        "The version is printed alone on the last line, for scripts.",
        allow_abbrev=False,
    )
    p.add_argument("path", metavar="PATH", help="MLflow model directory")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--description", help="description of the model")
    p.set_defaults(handler=cmd_register, leaf_parser=p)

    p = verbs.add_parser("list", parents=[common], help="list registered models and their versions", allow_abbrev=False)
    p.add_argument("--name", help="only this model")
    p.set_defaults(handler=cmd_list, leaf_parser=p)


@dataclass
class ModelArchive:
    data: bytes
    files: list[str]
    skipped: list[str] = field(default_factory=list)


def build_model_archive(path: str | os.PathLike[str]) -> ModelArchive:
    """Tar+gzip an MLflow model directory in memory: regular files only, paths relative to it.

    Symlinks are stored as the file they point to when that lies inside the directory, and
    skipped otherwise, so nothing outside the model directory is ever uploaded.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    if not (root / "MLmodel").is_file():
        raise UsageError(f"{root} is not an MLflow model directory: it has no MLmodel file")
    root = root.resolve()

    buffer = io.BytesIO()
    files: list[str] = []
    skipped: list[str] = []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinked dirs
            dirnames.sort()
            here = Path(dirpath)
            skipped += [(here / d).relative_to(root).as_posix() for d in dirnames if (here / d).is_symlink()]
            for filename in sorted(filenames):
                entry = here / filename
                arcname = entry.relative_to(root).as_posix()
                source = entry.resolve() if entry.is_symlink() else entry
                if not source.is_relative_to(root) or not source.is_file():
                    skipped.append(arcname)
                    continue
                stat = source.stat()
                info = tarfile.TarInfo(arcname)
                info.size = stat.st_size
                info.mtime = int(stat.st_mtime)
                info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
                files.append(arcname)
    return ModelArchive(data=buffer.getvalue(), files=files, skipped=skipped)


def _size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def cmd_register(ctx: Context) -> int:
    args = ctx.args
    archive = build_model_archive(args.path)
    for name in archive.skipped:
        ctx.note(f"warning: skipped {name}: a symlink that leaves the model directory, or not a regular file")
    ctx.note(f"Uploading {len(archive.files)} files ({_size(len(archive.data))} compressed) from {args.path}")
    params = {"name": args.name}
    if args.description is not None:
        params["description"] = args.description
    result = ctx.api.call(
        "POST",
        f"{REGISTERED_MODELS_PATH}/upload",
        params=params,
        data=archive.data,
        content_type="application/gzip",
    )
    if ctx.json_output:
        ctx.out(render.to_json(result))
    else:
        version = result.get("version", "")
        ctx.out(f"Registered {result.get('name', args.name)} version {version}")
        ctx.out(str(version))
    return EXIT_OK


def cmd_list(ctx: Context) -> int:
    name = ctx.args.name
    result = ctx.api.call("GET", REGISTERED_MODELS_PATH, params={"name": name} if name else None)
    models: list[dict[str, Any]] = result.get("registered_models") or []
    if name:  # the server may list everything; filter here too
        models = [m for m in models if m.get("name") == name]
    ctx.out(render.to_json(models) if ctx.json_output else render.models_table(models))
    return EXIT_OK
