"""The dashboard's import page: a file upload that runs the admin API's import."""

from __future__ import annotations

import hmac

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service.admin import importer
from service.admin.dashboard.auth import Session, signed_in
from service.admin.dashboard.render import page, problem
from service.admin.dashboard.views import CSRF_REFUSED

# Uploads are spooled to /tmp (64 MiB in k8s/): larger lists go through the API.
UPLOAD_MAX_BYTES = 32 * 1024 * 1024


def _limit(request: Request) -> int:
    return min(UPLOAD_MAX_BYTES, request.app.state.settings.import_max_bytes)


@signed_in
async def import_form(request: Request, session: Session) -> Response:
    return page(request, "import.html", csrf=session.csrf, result=None, limit=_limit(request))


@signed_in
async def import_upload(request: Request, session: Session) -> Response:
    limit = _limit(request)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > limit + 4096:
        return problem(
            request, 413, f"The file must be at most {limit // 2**20} MiB.", csrf=session.csrf
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return problem(request, 415, "Upload the file with the form.", csrf=session.csrf)
    try:
        form = await request.form(max_files=1, max_fields=2)
    except ClientDisconnect:
        return problem(request, 400, "The upload ended early.", csrf=session.csrf)
    except Exception:  # a malformed multipart body
        return problem(request, 400, "The upload could not be read.", csrf=session.csrf)
    try:
        csrf, upload = form.get("csrf"), form.get("file")
        if not isinstance(csrf, str) or not hmac.compare_digest(
            csrf.encode(), session.csrf.encode()
        ):
            return problem(request, 403, CSRF_REFUSED, csrf=session.csrf)
        if not isinstance(upload, UploadFile):
            return problem(request, 400, "Choose a file to import.", csrf=session.csrf)
        body = await upload.read(limit + 1)
        if len(body) > limit:
            return problem(
                request, 413, f"The file must be at most {limit // 2**20} MiB.", csrf=session.csrf
            )
    finally:
        await form.close()
    result = await importer.run(request.app, body)
    return page(request, "import.html", csrf=session.csrf, result=result, limit=limit)
