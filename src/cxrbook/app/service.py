"""What the app does, independent of HTTP: accounts, tokens, scoring uploads, history, deletion.

Every query of a user's data filters by that user (``owned``), so a result id of another user
behaves exactly like one that does not exist. Routes (``pages``, ``api``) only translate
requests to these calls and the outcomes to responses.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import BinaryIO, Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import security
from .db import ApiToken, LoginFailure, Prediction, User, new_id
from .scoring import BadImage, Models, ModelUnavailable, TrackRecord, track_record
from .settings import Settings
from .storage import Store, TooLarge

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

__all__ = ["AppContext", "BadImage", "Invalid", "LoginLocked", "ModelUnavailable", "TooLarge", "Upload"]


class Invalid(ValueError):
    """A request the user can fix (the message says how); ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


class LoginLocked(Exception):
    """Too many failed logins: answer 429 with ``locked.retry_after``."""

    def __init__(self, locked: security.Locked):
        self.locked = locked
        super().__init__(locked.message())


@dataclass
class Upload:
    """One uploaded file: the name the user gave it (shown back, never used in a path) and its bytes."""

    filename: str
    stream: BinaryIO
    size: int | None = None


@dataclass
class AppContext:
    """What every request needs: settings, the database sessions, the image store and the models."""

    settings: Settings
    sessions: sessionmaker
    store: Store
    models: Models

    # ------------------------------------------------------------------ accounts

    def register(self, db: Session, username: str, password: str) -> User:
        username = (username or "").strip()
        if not USERNAME.match(username):
            raise Invalid("a username has 3 to 64 letters, digits, dots, dashes or underscores")
        if not MIN_PASSWORD <= len(password or "") <= MAX_PASSWORD:
            raise Invalid(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        user = User(username=username, password_hash=security.hash_password(password), session_nonce=new_id())
        db.add(user)
        try:
            db.commit()
        except IntegrityError:
            db.rollback()
            raise Invalid("that username is taken", status=409) from None
        return user

    def login(self, db: Session, username: str, password: str, address: str) -> User:
        """The user whose password this is; Invalid (401) otherwise, LoginLocked once a limit is reached."""
        s = self.settings
        keys = security.limit_keys(username or "", address or "unknown")
        limits = [s.max_failures_account, s.max_failures_address]
        locked = security.check_locked(db, keys, limits, s.login_window_s)
        if locked:
            raise LoginLocked(locked)
        user = db.scalar(select(User).where(User.username == (username or "").strip()))
        if security.verify_password(user.password_hash if user else None, password or ""):
            security.clear_failures(db, keys[0])
            return user
        security.record_failure(db, keys, s.login_window_s)
        raise Invalid("wrong username or password", status=401)

    def user_for_session(self, db: Session, uid, nonce) -> User | None:
        """The user a session cookie names, if it still exists and the cookie's nonce is still theirs."""
        if not isinstance(uid, int) or not isinstance(nonce, str):
            return None
        user = db.get(User, uid)
        return user if user is not None and security.csrf_matches(user.session_nonce, nonce) else None

    def issue_token(self, db: Session, user: User) -> tuple[str, float]:
        """(a new bearer token, its expiry in epoch seconds); only its hash is stored."""
        token, digest = security.new_token()
        expires = time.time() + self.settings.token_max_age_s
        db.add(ApiToken(user_id=user.id, token_hash=digest, expires_at=expires))
        db.commit()
        return token, expires

    def user_for_token(self, db: Session, token: str | None) -> User | None:
        if not token:
            return None
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token),
                                               ApiToken.expires_at > time.time()))
        return db.get(User, row.user_id) if row else None

    def delete_account(self, db: Session, user: User) -> int:
        """Remove the user, their tokens, results and stored files; returns how many results went."""
        names = db.execute(select(Prediction.image_name, Prediction.overlay_name)
                           .where(Prediction.user_id == user.id)).all()
        db.execute(delete(Prediction).where(Prediction.user_id == user.id))
        db.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
        db.execute(delete(LoginFailure).where(LoginFailure.key == security.limit_keys(user.username, "")[0]))
        db.execute(delete(User).where(User.id == user.id))
        db.commit()
        for image, overlay in names:  # after the commit: a failed commit leaves rows and files together
            self.store.delete(image, overlay)
        return len(names)

    # ------------------------------------------------------------------ predictions

    def predict(self, db: Session, user: User, model: str | None, uploads: Sequence[Upload],
                overlay: bool) -> tuple[list[Prediction], list[BadImage]]:
        """Score every upload with ``model``: (the stored results, one BadImage per file not scored).

        Nothing is stored for a refused request: ModelUnavailable (unknown model), Invalid (no file, too
        many files) or TooLarge (a file over the limit). A file that is not a usable image is reported
        and the others are still scored.
        """
        s = self.settings
        info = self.models.info(model)
        uploads = [u for u in uploads if u.filename or u.size]
        if not uploads:
            raise Invalid("choose at least one PNG or JPEG image to upload")
        if len(uploads) > s.max_files:
            raise Invalid(f"at most {s.max_files} images per upload; you sent {len(uploads)}")
        for u in uploads:
            if u.size is not None and u.size > s.max_upload_bytes:
                raise TooLarge(f"{display_name(u.filename)} is larger than the "
                               f"{s.max_upload_bytes / 2**20:.0f} MiB limit per image")
        stored: list[tuple[Upload, str]] = []
        try:
            for u in uploads:
                try:
                    name, _ = self.store.save_stream(u.stream, s.max_upload_bytes)
                except TooLarge:
                    raise TooLarge(f"{display_name(u.filename)} is larger than the "
                                   f"{s.max_upload_bytes / 2**20:.0f} MiB limit per image") from None
                stored.append((u, name))
        except BaseException:
            self.store.delete(*(n for _, n in stored))
            raise
        results, errors, keep = [], [], []
        try:
            for u, name in stored:
                shown = display_name(u.filename)
                overlay_name = self.store.overlay_name_for(name) if overlay else None
                try:
                    scored = self.models.score_file(info.name, self.store.path_of(name), shown, s.max_pixels,
                                                    self.store.path_of(overlay_name) if overlay_name else None)
                except BadImage as e:
                    self.store.delete(name)
                    errors.append(e)
                    continue
                if not scored.overlay_written:
                    overlay_name = None
                keep += [name, overlay_name]
                row = Prediction(user_id=user.id, model=info.name, original_name=shown, image_name=name,
                                 overlay_name=overlay_name, classes=scored.classes,
                                 probabilities=scored.probabilities, predicted=scored.predicted,
                                 threshold=scored.threshold, score=scored.score, caution=scored.caution,
                                 note="; ".join(scored.messages))
                db.add(row)
                results.append(row)
            db.commit()
        except BaseException:
            db.rollback()
            self.store.delete(*keep)
            for _, name in stored:
                self.store.delete(name)
            raise
        return results, errors

    def owned(self, db: Session, user: User, prediction_id: str) -> Prediction | None:
        """The user's result with this id; None for an unknown id AND for another user's."""
        return db.scalar(select(Prediction).where(Prediction.id == str(prediction_id),
                                                  Prediction.user_id == user.id))

    def history(self, db: Session, user: User, limit: int = 500) -> list[Prediction]:
        return list(db.scalars(select(Prediction).where(Prediction.user_id == user.id)
                               .order_by(Prediction.created_at.desc()).limit(limit)))

    def delete_prediction(self, db: Session, user: User, prediction_id: str) -> bool:
        row = self.owned(db, user, prediction_id)
        if row is None:
            return False
        names = (row.image_name, row.overlay_name)
        db.delete(row)
        db.commit()
        self.store.delete(*names)
        return True

    def track_record(self, model: str) -> TrackRecord:
        """The model's recorded tests (read from outputs/ on each call: a new report shows at once)."""
        info = self.models.info(model)
        return track_record(self.settings.outputs_dir, info.name, info.classes, info.threshold, info.image_size)


def display_name(filename: str | None) -> str:
    """The upload's own name as shown back to its owner: the last path part, printable, at most 120 characters."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "upload"
    return name[:120]


def prediction_dict(row: Prediction) -> dict:
    """The API's view of one result."""
    return {"id": row.id, "model": row.model, "filename": row.original_name, "classes": row.classes,
            "probabilities": dict(zip(row.classes, row.probabilities)), "score": row.score,
            "score_label": (f"P({row.classes[1]})" if len(row.classes) == 2 else f"P({row.predicted})"),
            "decision": row.predicted, "threshold": row.threshold, "caution": row.caution,
            "created_at": row.created_at, "has_overlay": row.overlay_name is not None, "note": row.note}
