"""What a request's body must be. Each endpoint that takes a body reads either JSON (in UTF-8)
or a multipart form, as its OpenAPI entry says; a body of another type (a photo or a multipart
upload posted to a JSON endpoint, JSON posted to an upload, raw bytes, JSON in another charset)
is a 415 that says what to send instead, and a body that cannot be read as its type is a 400
that says why. One app-wide dependency (:func:`body_type`) and two exception handlers
(:func:`install`) hold it for every endpoint, present and future.

An endpoint can name a better place for a body it does not take in its ``openapi_extra``
under :data:`INSTEAD` (``POST /v1/search`` sends photos to ``/v1/search/image``)."""

from __future__ import annotations

import email.message
import inspect
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
INSTEAD = "x-instead"  # openapi_extra key: where a body this endpoint does not take belongs
UTF8 = {"utf-8", "utf8", "us-ascii", "ascii"}
CHECKED = "lookalike.body_type_checked"  # in the scope once body_type ran: a 400 before it is the parse's


def body_type(request: Request) -> None:
    """Refuse a body whose Content-Type the endpoint does not read (415), or a missing one
    (422), before the body is validated or any other dependency runs (key checks, the broker)."""
    route = request.scope.get("route")
    request.scope[CHECKED] = True
    if not isinstance(route, APIRoute) or route.body_field is None:
        return
    given = request.headers.get("content-type")
    if not _has_body(request):
        if route.body_field.field_info.is_required():
            raise HTTPException(422, f"{_endpoint(request)} needs a body; {_what_to_send(route)}")
        return
    problem = _mismatch(_expected(route), given)
    if problem is not None:
        raise HTTPException(415, f"{_endpoint(request)} {problem}; {_what_to_send(route)}")


def install(app: FastAPI) -> None:
    """The handlers that keep unreadable bodies 4xx with a reason."""
    app.exception_handler(StarletteHTTPException)(_unreadable_body)
    app.exception_handler(RequestValidationError)(_invalid)


async def _unreadable_body(request: Request, exc: StarletteHTTPException) -> Response:
    """The bare 400 FastAPI or Starlette give for a body they could not parse before any
    dependency ran (JSON that is not UTF-8, a multipart body without its boundary), with what
    was wrong and what to send."""
    route = request.scope.get("route")
    parsing = exc.status_code == 400 and not request.scope.get(CHECKED)
    if not parsing or not isinstance(route, APIRoute) or route.body_field is None:
        return await http_exception_handler(request, exc)
    cause = exc.__cause__
    why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc.detail)
    detail = (
        f"{_endpoint(request)} could not read the body as {_expected(route)} ({why}); {_what_to_send(route)}"
    )
    return JSONResponse({"detail": detail}, status_code=400)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with raw bytes in an error's ``input`` described instead of decoded
    (bytes that are not UTF-8 made the default handler fail: a 500)."""
    errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: _describe})
    return JSONResponse({"detail": errors}, status_code=422)


def _describe(data: bytes) -> str:
    return f"<{len(data)} bytes>"


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length", "0")
    return "transfer-encoding" in request.headers or not length.isdigit() or int(length) > 0


def _expected(route: APIRoute) -> str:
    assert route.body_field is not None
    return str(getattr(route.body_field.field_info, "media_type", JSON))


def _mismatch(expected: str, given: str | None) -> str | None:
    """Why a body of Content-Type ``given`` is not what an endpoint reading ``expected``
    takes; None when it is."""
    if given is None:
        return f"needs a Content-Type header: the body is read as {expected}"
    message = email.message.Message()
    message["content-type"] = given
    media = message.get_content_type()  # text/plain when unparseable
    if expected == JSON:
        if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
            return f"takes a JSON object (Content-Type: {JSON}), not {media}"
        charset = message.get_param("charset")
        if isinstance(charset, str) and charset.lower() not in UTF8:
            return f"reads JSON in UTF-8, not in {charset}"
        return None
    if expected == media or (expected == URLENCODED and media == MULTIPART):
        return None
    return f"takes a form upload (Content-Type: {expected}), not {media}"


def _what_to_send(route: APIRoute) -> str:
    expected = _expected(route)
    if expected == JSON:
        what = f"send a JSON object in UTF-8 with Content-Type: {JSON}"
    else:
        required, optional = _form_fields(route)
        what = f"send {expected} with the fields {', '.join(required)}"
        if optional:
            what += f" (optional: {', '.join(optional)})"
    instead = (route.openapi_extra or {}).get(INSTEAD)
    return f"{what}; {instead}" if instead else what


def _form_fields(route: APIRoute) -> tuple[list[str], list[str]]:
    """The form's field names, required ones first, files marked."""
    fields: dict[str, tuple[bool, Any]] = {}
    for param in route.dependant.body_params:
        model = param.field_info.annotation
        if inspect.isclass(model) and issubclass(model, BaseModel):
            for name, info in model.model_fields.items():
                fields[info.alias or name] = (info.is_required(), info.annotation)
        else:
            fields[param.alias] = (param.field_info.is_required(), model)
    required = [_field(name, kind) for name, (needed, kind) in fields.items() if needed]
    optional = [_field(name, kind) for name, (needed, kind) in fields.items() if not needed]
    return required, optional


def _field(name: str, kind: Any) -> str:
    return f"{name} (a file)" if inspect.isclass(kind) and issubclass(kind, UploadFile) else name


def _endpoint(request: Request) -> str:
    return f"{request.method} {request.url.path}"
