"""REST views: parse, authenticate (DRF), call one service or selector, render the wire shape."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpResponse, JsonResponse, QueryDict
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from endpoints_app import access, registry, selectors
from endpoints_app.api.openapi import endpoint_openapi
from endpoints_app.api.parsers import AnyContentTypeJSONParser, check_path_and_query
from endpoints_app.api.serializers.endpoints import (
    serialize_endpoint_detailed,
    serialize_endpoint_summary,
    serialize_tags,
)
from endpoints_app.api.serializers.models import serialize_model_version
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.backends import get_backend
from endpoints_app.errors import InvalidParameterValue, MalformedRequest, NotSupported
from endpoints_app.models import Endpoint, PermissionLevel
from endpoints_app.runtime.layout import LogKind
from endpoints_app.services import checks
from endpoints_app.services import endpoints as endpoint_services

MAX_MODEL_UPLOAD_BYTES = 2 * 1024**3


def request_body(request: Request) -> Any:
    data = request.data
    if isinstance(data, QueryDict):  # DRF's value for an empty body
        return {}
    return data


class ApiView(APIView):
    parser_classes = [AnyContentTypeJSONParser]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """After authentication, refuse NUL characters in the path and query (bodies: the parser)."""
        super().initial(request, *args, **kwargs)
        check_path_and_query(request.query_params, kwargs)

    def endpoint(self, request: AuthenticatedRequest, name: str, needed: str) -> Endpoint:
        """The endpoint, if the caller may do ``needed`` with it (404 / 403 otherwise)."""
        endpoint = selectors.endpoint_by_name(name)
        access.require(request.user, endpoint, needed)
        return endpoint


class RawResponseApiView(ApiView):
    """A view answering raw text (OpenAPI, metrics): any Accept is fine; errors are still JSON.

    The Databricks SDK asks for these with ``Accept: text/plain``, which DRF's negotiation would
    refuse with 406 because the API only renders JSON.
    """

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        renderer = JSONRenderer()
        return renderer, renderer.media_type


def base_url(request: Request) -> str:
    """This server as the caller reached it (a host ALLOWED_HOSTS let through), without a slash."""
    return request.build_absolute_uri("/").rstrip("/")


def detailed(request: AuthenticatedRequest, name: str) -> Response:
    """The endpoint's wire shape, with its ETag for conditional writes (If-Match)."""
    endpoint = selectors.endpoint_detail(name)
    body = serialize_endpoint_detailed(
        endpoint, permission_level=access.endpoint_level(request.user, endpoint) or "", base_url=base_url(request)
    )
    return Response(body, headers={"ETag": checks.etag(endpoint)})


def if_match(request: Request) -> str | None:
    return request.headers.get("If-Match") or None


class EndpointListView(ApiView):
    """``/api/2.0/serving-endpoints``, also with a trailing slash: mlflow's deployment client lists
    and creates at ``/api/2.0/serving-endpoints/``, which Databricks accepts."""

    def get(self, request: AuthenticatedRequest) -> Response:
        endpoints = list(access.visible_endpoints(request.user, selectors.endpoint_list()))
        return Response({"endpoints": [serialize_endpoint_summary(e) for e in endpoints]})

    def post(self, request: AuthenticatedRequest) -> Response:
        outcome = endpoint_services.create_endpoint(actor=request.user, body=request_body(request))
        return detailed(request, outcome.applied().name)


class EndpointDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        return detailed(request, name)

    def delete(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint_services.delete_endpoint(actor=request.user, name=name, if_match=if_match(request))
        return Response({})

    def post(self, request: AuthenticatedRequest, name: str) -> Response:
        """``POST /api/2.0/serving-endpoints/pt`` is Databricks' provisioned-throughput create; an
        endpoint may still be named ``pt`` (GET and DELETE above), so only POST means that here."""
        if name == PROVISIONED_THROUGHPUT:
            raise NotSupported(PROVISIONED_THROUGHPUT_MESSAGE)
        raise MethodNotAllowed("POST")


PROVISIONED_THROUGHPUT = "pt"
PROVISIONED_THROUGHPUT_MESSAGE = (
    "Provisioned-throughput endpoints (foundation models in provisioned model units) are not supported by "
    "Modelfleet: create an endpoint with POST /api/2.0/serving-endpoints serving a registered model, or an "
    "external model (served_entities[].external_model)"
)


class ProvisionedThroughputConfigView(ApiView):
    """``PUT /api/2.0/serving-endpoints/pt/<name>/config`` (SDK
    ``update_provisioned_throughput_endpoint_config``): not supported, as for the create."""

    def put(self, request: AuthenticatedRequest, name: str) -> Response:
        raise NotSupported(
            PROVISIONED_THROUGHPUT_MESSAGE
            + f"; change an endpoint's config with PUT /api/2.0/serving-endpoints/{name}/config"
        )


class ExternalFunctionView(RawResponseApiView):
    """``POST /api/2.0/external-function`` (SDK ``serving_endpoints.http_request``): Databricks
    sends an HTTP request through a Unity Catalog connection. Modelfleet has no connections (its
    external providers are reached through serving endpoints, with credentials in secret scopes),
    so this is a clear 400 rather than a call to somewhere nobody configured."""

    def post(self, request: AuthenticatedRequest) -> Response:
        raise NotSupported(
            "Unity Catalog connections are not supported by Modelfleet, so /api/2.0/external-function has none to "
            "call: serve the external service as an external model (served_entities[].external_model, its "
            "credentials as {{secrets/<scope>/<key>}}) and query it at /serving-endpoints/<name>/invocations"
        )


class EndpointConfigView(ApiView):
    def put(self, request: AuthenticatedRequest, name: str) -> Response:
        """The config itself, or wrapped as ``{"config": {...}}``; the service checks the rest."""
        body = request_body(request)
        wrapped = isinstance(body, dict) and "config" in body and not {"served_entities", "served_models"} & set(body)
        if wrapped:
            body = body["config"]
        endpoint_services.update_endpoint_config(actor=request.user, name=name, body=body, if_match=if_match(request))
        return detailed(request, name)


class EndpointTagsView(ApiView):
    def patch(self, request: AuthenticatedRequest, name: str) -> Response:
        outcome = endpoint_services.patch_endpoint_tags(
            actor=request.user, name=name, body=request_body(request), if_match=if_match(request)
        )
        return Response({"tags": serialize_tags(outcome.applied())})


class EndpointOpenApiView(RawResponseApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> HttpResponse:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        document = endpoint_openapi(endpoint, host=request.build_absolute_uri("/").rstrip("/"))
        return HttpResponse(json.dumps(document, indent=2), content_type="application/json")


class ServedModelLogsView(ApiView):
    kind: LogKind = "server"

    def get(self, request: AuthenticatedRequest, name: str, served_model_name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        entity = selectors.served_entity_for_logs(endpoint, served_model_name)
        return Response({"logs": get_backend().logs(entity=entity, kind=self.kind)})


class ServedModelBuildLogsView(ServedModelLogsView):
    kind = "build"


class RegisteredModelListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        name = request.query_params.get("name") or None
        return Response({"registered_models": registry.list_registered_models(name)})


class RegisteredModelUploadView(ApiView):
    """Register an MLflow model directory sent as a gzipped tar (``modelfleet models register``)."""

    def post(self, request: AuthenticatedRequest) -> Response:
        access.require_create(request.user)  # registering models is an editor's job, like creating endpoints
        name = (request.query_params.get("name") or "").strip()
        if not name:
            raise InvalidParameterValue("query parameter 'name' is required: the registered model name")
        description = request.query_params.get("description") or ""
        with tempfile.TemporaryDirectory(prefix="upload-", dir=_upload_dir()) as tmp:
            archive = Path(tmp) / "model.tar.gz"
            _save_stream(request, archive)
            target = Path(tmp) / "model"
            target.mkdir()
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    _refuse_link_members(tar)
                    tar.extractall(target, filter="data")  # refuses absolute paths, links out, devices
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise MalformedRequest(f"the upload is not a valid gzipped tar archive: {exc}") from None
            _refuse_links(target)
            root = _model_root(target)
            info = registry.register_model_dir(root, name, description=description)
        return Response(serialize_model_version(info))


def _upload_dir() -> str:
    path = Path(settings.DATA_DIR) / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _save_stream(request: Request, path: Path) -> None:
    total = 0
    with open(path, "wb") as fh:
        stream = request._request
        while chunk := stream.read(1024 * 1024):
            total += len(chunk)
            if total > MAX_MODEL_UPLOAD_BYTES:
                raise InvalidParameterValue("the model archive is larger than 2 GiB")
            fh.write(chunk)
    if total == 0:
        raise InvalidParameterValue("the request body is empty: send the model directory as a gzipped tar")


def _refuse_link_members(tar: tarfile.TarFile) -> None:
    """Only folders and regular files, checked before anything is written.

    tarfile's ``data`` filter of this Python (3.11.7) predates the 2025 fixes that stopped links
    from writing outside the destination (CVE-2025-4517 and others), and the registry copies a
    model with ``copytree(symlinks=False)``, which would follow a link to any file the control
    plane can read.  A model needs neither, so an archive holding a link, a device or a FIFO is
    refused whole.
    """
    for member in tar:
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise InvalidParameterValue(
                f"the model archive holds a {kind}, '{member.name[:200]}': only folders and regular files are accepted"
            )


def _refuse_links(target: Path) -> None:
    """After extraction, once more on what is on disk: no symlink, no file with another hard link,
    nothing but folders and regular files (a second line behind _refuse_link_members)."""
    import os
    import stat

    for folder, dirnames, filenames in os.walk(target, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            relative = os.path.relpath(path, target)[:200]
            if stat.S_ISLNK(info.st_mode):
                problem = "a symbolic link"
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                problem = "a hard link"
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                problem = "a special file"
            else:
                continue
            raise InvalidParameterValue(
                f"the model archive holds {problem}, '{relative}': only folders and regular files are accepted"
            )


def _model_root(target: Path) -> Path:
    """The folder holding MLmodel: the archive root, or its single top-level folder."""
    if (target / "MLmodel").is_file():
        return target
    children = [p for p in target.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / "MLmodel").is_file():
        return children[0]
    raise InvalidParameterValue("the archive holds no MLflow model: no MLmodel file at its root")


class WellKnownConfigView(APIView):
    """Host metadata the Databricks SDK probes when a client is constructed (reference §5.2)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> JsonResponse:
        # oidc_endpoint: where an OAuth client (oauth-m2m, data-plane queries) finds
        # <oidc_endpoint>/.well-known/oauth-authorization-server (api/oauth_views.py).
        return JsonResponse({"workspace_id": settings.WORKSPACE_ID, "oidc_endpoint": f"{base_url(request)}/oidc"})
