"""The browser pages: server-rendered Jinja templates, a CSRF token in every form, thin handlers over ``service``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.orm import Session

from . import security
from .db import User
from .service import Invalid, LoginLocked, ModelUnavailable, TooLarge, Upload
from .web import check_csrf, client_address, ctx, get_db, render

router = APIRouter()


def optional_user(request: Request, db: Session = Depends(get_db)) -> User | None:
    user = ctx(request).user_for_session(db, request.session.get("uid"), request.session.get("nonce"))
    request.state.user = user
    return user


def required_user(user: User | None = Depends(optional_user)) -> User:
    if user is None:
        raise HTTPException(303, "log in first", headers={"Location": "/login"})
    return user


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _start_session(request: Request, user: User) -> None:
    request.session.clear()  # a new session at login: nothing carried over from before
    request.session.update(uid=user.id, nonce=user.session_nonce, csrf=security.new_csrf())


@router.get("/")
def home(user: User | None = Depends(optional_user)):
    return _redirect("/upload" if user else "/login")


@router.get("/register")
def register_form(request: Request, user: User | None = Depends(optional_user)):
    return render(request, "register.html")


@router.post("/register")
def register(request: Request, username: str = Form(""), password: str = Form(""), confirm: str = Form(""),
             csrf_token: str = Form(""), db: Session = Depends(get_db), _=Depends(optional_user)):
    check_csrf(request, csrf_token)
    try:
        if password != confirm:
            raise Invalid("the two passwords differ")
        user = ctx(request).register(db, username, password)
    except Invalid as e:
        return render(request, "register.html", status=e.status, error=str(e), username=username)
    _start_session(request, user)
    return _redirect("/upload")


@router.get("/login")
def login_form(request: Request, user: User | None = Depends(optional_user)):
    return render(request, "login.html")


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
          db: Session = Depends(get_db), _=Depends(optional_user)):
    check_csrf(request, csrf_token)
    try:
        user = ctx(request).login(db, username, password, client_address(request))
    except LoginLocked as e:
        return render(request, "login.html", status=429, headers={"Retry-After": str(e.locked.retry_after)},
                      error=str(e), username=username)
    except Invalid as e:
        return render(request, "login.html", status=e.status, error=str(e), username=username)
    _start_session(request, user)
    return _redirect("/upload")


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form(""), _=Depends(optional_user)):
    check_csrf(request, csrf_token)
    request.session.clear()
    return _redirect("/login")


@router.get("/upload")
def upload_form(request: Request, user: User = Depends(required_user)):
    models = ctx(request).models
    return render(request, "upload.html", models=models.available, default=models.default)


@router.post("/upload")
def upload(request: Request, files: list[UploadFile] = File(default=[]), model: str = Form(""),
           overlay: str = Form(""), csrf_token: str = Form(""), db: Session = Depends(get_db),
           user: User = Depends(required_user)):
    check_csrf(request, csrf_token)
    c = ctx(request)
    uploads = [Upload(f.filename or "", f.file, f.size) for f in files]
    page = {"models": c.models.available, "default": model or c.models.default}
    try:
        results, errors = c.predict(db, user, model or None, uploads, overlay=bool(overlay))
    except TooLarge as e:
        return render(request, "upload.html", status=413, error=str(e), **page)
    except (Invalid, ModelUnavailable) as e:
        return render(request, "upload.html", status=getattr(e, "status", 400), error=str(e), **page)
    if not results:
        status = 415 if all(e.reason == "dicom_unsupported" for e in errors) else 400
        return render(request, "upload.html", status=status, errors=[str(e) for e in errors], **page)
    if len(results) == 1 and not errors:
        return _redirect(f"/results/{results[0].id}")
    return render(request, "batch.html", results=results, errors=[str(e) for e in errors])


def _owned(request: Request, db: Session, user: User, prediction_id: str):
    row = ctx(request).owned(db, user, prediction_id)
    if row is None:
        raise HTTPException(404, "No such result (it was deleted, or it is not yours).")
    return row


@router.get("/results/{prediction_id}")
def result(request: Request, prediction_id: str, db: Session = Depends(get_db), user: User = Depends(required_user)):
    row = _owned(request, db, user, prediction_id)
    c = ctx(request)
    try:
        record = c.track_record(row.model)
    except ModelUnavailable:
        record = None
    return render(request, "result.html", r=row, record=record)


@router.get("/results/{prediction_id}/overlay.png")
def overlay_file(request: Request, prediction_id: str, db: Session = Depends(get_db),
                 user: User = Depends(required_user)):
    row = _owned(request, db, user, prediction_id)
    if not row.overlay_name:
        raise HTTPException(404, "This result has no Grad-CAM overlay.")
    return FileResponse(ctx(request).store.path_of(row.overlay_name), media_type="image/png")


@router.get("/results/{prediction_id}/image")
def image_file(request: Request, prediction_id: str, db: Session = Depends(get_db),
               user: User = Depends(required_user)):
    row = _owned(request, db, user, prediction_id)
    path = ctx(request).store.path_of(row.image_name)
    with open(path, "rb") as f:
        head = f.read(8)
    media = "image/png" if head.startswith(b"\x89PNG") else "image/jpeg" if head.startswith(b"\xff\xd8") else None
    if media is None:
        raise HTTPException(404, "This image is not a PNG or JPEG, so it is not shown in the browser.")
    return FileResponse(path, media_type=media)


@router.post("/results/{prediction_id}/delete")
def delete_result(request: Request, prediction_id: str, csrf_token: str = Form(""), db: Session = Depends(get_db),
                  user: User = Depends(required_user)):
    check_csrf(request, csrf_token)
    if not ctx(request).delete_prediction(db, user, prediction_id):
        raise HTTPException(404, "No such result (it was deleted, or it is not yours).")
    return _redirect("/history")


@router.get("/history")
def history(request: Request, db: Session = Depends(get_db), user: User = Depends(required_user)):
    return render(request, "history.html", rows=ctx(request).history(db, user))


@router.get("/account")
def account(request: Request, user: User = Depends(required_user)):
    return render(request, "account.html")


@router.post("/account/delete")
def delete_account(request: Request, password: str = Form(""), csrf_token: str = Form(""),
                   db: Session = Depends(get_db), user: User = Depends(required_user)):
    check_csrf(request, csrf_token)
    if not security.verify_password(user.password_hash, password):
        return render(request, "account.html", status=401, error="wrong password: the account was not deleted")
    n = ctx(request).delete_account(db, user)
    request.session.clear()
    return render(request, "deleted.html", user=None, n=n)
