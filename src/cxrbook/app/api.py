"""The JSON API for scripts: bearer tokens (no cookies, so no CSRF), mounted at ``/api/v1`` and ``/api``.

``POST /api/register`` and ``POST /api/token`` take ``{"username", "password"}``; ``POST /api/predictions``
takes a multipart ``file`` (optional ``model``, ``overlay``) and answers 201; a result id of another user
answers 404, exactly like an unknown one.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from .db import User
from .scoring import DISCLAIMER
from .service import Invalid, LoginLocked, ModelUnavailable, TooLarge, Upload, prediction_dict
from .web import client_address, ctx, get_db

API_VERSION = 1
router = APIRouter()
NOT_FOUND = "no such prediction (deleted, or not yours)"


class Credentials(BaseModel):
    username: str
    password: str


def bearer_user(request: Request, db: Session = Depends(get_db)) -> User:
    """The user of ``Authorization: Bearer <token>``; 401 otherwise."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    user = ctx(request).user_for_token(db, token.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPException(401, "missing, unknown or expired bearer token: POST /api/token first",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


def _full(request: Request, row) -> dict:
    out = prediction_dict(row)
    try:
        out["track_record"] = ctx(request).track_record(row.model).as_dict()
    except ModelUnavailable:
        out["track_record"] = None
    out["disclaimer"] = DISCLAIMER
    out["overlay_url"] = str(request.url_for("api_overlay", prediction_id=row.id)) if row.overlay_name else None
    out["api_version"] = API_VERSION
    return out


@router.post("/register", status_code=201)
def register(body: Credentials, request: Request, db: Session = Depends(get_db)):
    try:
        user = ctx(request).register(db, body.username, body.password)
    except Invalid as e:
        raise HTTPException(e.status, str(e)) from None
    return {"id": user.id, "username": user.username}


@router.post("/token")
def token(body: Credentials, request: Request, db: Session = Depends(get_db)):
    try:
        user = ctx(request).login(db, body.username, body.password, client_address(request))
    except LoginLocked as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.locked.retry_after)}) from None
    except Invalid as e:
        raise HTTPException(e.status, str(e)) from None
    value, expires = ctx(request).issue_token(db, user)
    return {"token": value, "token_type": "bearer", "expires_at": expires}


@router.post("/predictions", status_code=201)
def create_prediction(request: Request, response: Response, file: UploadFile = File(...), model: str = Form(""),
                      overlay: bool = Form(False), db: Session = Depends(get_db), user: User = Depends(bearer_user)):
    try:
        results, errors = ctx(request).predict(db, user, model or None, [Upload(file.filename or "", file.file,
                                                                                file.size)], overlay=overlay)
    except TooLarge as e:
        raise HTTPException(413, str(e)) from None
    except ModelUnavailable as e:
        raise HTTPException(400, str(e)) from None
    except Invalid as e:
        raise HTTPException(e.status, str(e)) from None
    if errors:
        e = errors[0]
        return JSONResponse({"detail": str(e), "reason": e.reason},
                            status_code=415 if e.reason == "dicom_unsupported" else 422)
    row = results[0]
    response.headers["Location"] = str(request.url_for("api_prediction", prediction_id=row.id))
    return _full(request, row)


@router.get("/predictions")
def list_predictions(request: Request, db: Session = Depends(get_db), user: User = Depends(bearer_user)):
    return {"predictions": [prediction_dict(r) for r in ctx(request).history(db, user)]}


@router.get("/predictions/{prediction_id}", name="api_prediction")
def get_prediction(prediction_id: str, request: Request, db: Session = Depends(get_db),
                   user: User = Depends(bearer_user)):
    row = ctx(request).owned(db, user, prediction_id)
    if row is None:
        raise HTTPException(404, NOT_FOUND)
    return _full(request, row)


@router.get("/predictions/{prediction_id}/overlay.png", name="api_overlay")
def get_overlay(prediction_id: str, request: Request, db: Session = Depends(get_db),
                user: User = Depends(bearer_user)):
    row = ctx(request).owned(db, user, prediction_id)
    if row is None or not row.overlay_name:
        raise HTTPException(404, NOT_FOUND if row is None else "this prediction has no Grad-CAM overlay")
    return FileResponse(ctx(request).store.path_of(row.overlay_name), media_type="image/png")


@router.delete("/predictions/{prediction_id}", status_code=204)
def delete_prediction(prediction_id: str, request: Request, db: Session = Depends(get_db),
                      user: User = Depends(bearer_user)):
    if not ctx(request).delete_prediction(db, user, prediction_id):
        raise HTTPException(404, NOT_FOUND)
    return Response(status_code=204)


@router.get("/models")
def models(request: Request, _: User = Depends(bearer_user)):
    m = ctx(request).models
    return {"default": m.default, "models": [{"name": i.name, "classes": i.classes, "threshold": i.threshold,
                                               "image_size": i.image_size, "kind": i.kind}
                                              for i in m.available.values()]}


@router.delete("/account", status_code=204)
def delete_account(request: Request, db: Session = Depends(get_db), user: User = Depends(bearer_user)):
    ctx(request).delete_account(db, user)
    return Response(status_code=204)
