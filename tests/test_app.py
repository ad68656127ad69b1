"""The web app (``python -m cxrbook serve``) through FastAPI's test client, on SQLite AND PostgreSQL.

Accounts, the failed-login limit, CSRF refusal, isolation between users (404 for another user's result,
on pages and in the API), account deletion leaving no rows and no files, and every kind of bad upload
answered with a message and a 4xx while the server keeps serving. Models are tiny ones trained here on
generated images (tests/app_support.py), never the real data.
"""

from __future__ import annotations

import ast
import html
import re
import stat
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app_support import (dicom_bytes, huge_header_png, jpeg, models_dir, need, pg_url_or_skip, png,
                         temporary_pg_database, truncated_png, write_records)

need("fastapi"), need("sqlalchemy"), need("alembic"), need("argon2"), need("python_multipart")
from fastapi.testclient import TestClient  # noqa: E402

from cxrbook.app import db as DB  # noqa: E402
from cxrbook.app.main import SESSION_COOKIE, create_app  # noqa: E402
from cxrbook.app.settings import Settings, secret_key  # noqa: E402

PASSWORD = "correct horse 1"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def app_models(tmp_path_factory) -> Path:
    return models_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def app_outputs(tmp_path_factory, app_models) -> Path:
    out = tmp_path_factory.mktemp("app_outputs")
    write_records(out, app_models / "logreg_pixels.joblib")
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """None (SQLite under the data folder, the default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    pg_url_or_skip()
    with temporary_pg_database() as url:
        yield url


@pytest.fixture
def settings(tmp_path, app_models, app_outputs, db_url) -> Settings:
    return Settings(models_dir=app_models, outputs_dir=app_outputs, data_dir=tmp_path / "data", db_url=db_url,
                    default_model="logreg_pixels", max_upload_bytes=300 * 1024, max_files=3)


@pytest.fixture
def app(settings):
    a = create_app(settings)
    yield a
    a.state.engine.dispose()


def client_of(app) -> TestClient:
    return TestClient(app, base_url="http://testserver")


@pytest.fixture
def client(app):
    with client_of(app) as c:
        yield c


# --------------------------------------------------------------------------- helpers

def csrf_of(c: TestClient, page: str = "/login") -> str:
    return CSRF.search(c.get(page).text).group(1)


def register(c: TestClient, name: str, password: str = PASSWORD):
    return c.post("/register", data={"username": name, "password": password, "confirm": password,
                                     "csrf_token": csrf_of(c, "/register")}, follow_redirects=False)


def login(c: TestClient, name: str, password: str = PASSWORD):
    return c.post("/login", data={"username": name, "password": password, "csrf_token": csrf_of(c)},
                  follow_redirects=False)


def upload(c: TestClient, files: list[tuple[str, bytes]], model: str = "logreg_pixels", overlay: bool = False,
           token: str | None = None):
    data = {"csrf_token": token if token is not None else csrf_of(c, "/upload"), "model": model}
    if overlay:
        data["overlay"] = "1"
    return c.post("/upload", data=data, files=[("files", (n, b, "application/octet-stream")) for n, b in files],
                  follow_redirects=False)


def api_user(c: TestClient, name: str) -> dict:
    assert c.post("/api/register", json={"username": name, "password": PASSWORD}).status_code == 201
    r = c.post("/api/token", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def api_upload(c: TestClient, headers: dict, name: str, body: bytes, **data):
    return c.post("/api/predictions", headers=headers, data=data, files={"file": (name, body, "image/png")})


def count(app, table) -> int:
    with app.state.ctx.sessions() as s:
        return s.scalar(select(func.count()).select_from(table))


def stored_files(app) -> set[str]:
    return app.state.ctx.store.names()


# --------------------------------------------------------------------------- basics and accounts

def test_health_and_banner(client):
    assert client.get("/health").json() == {"status": "ok"}
    for page in ("/login", "/register"):
        assert "RESEARCH TOOL, NOT A DIAGNOSIS" in client.get(page).text
    assert client.get("/upload", follow_redirects=False).headers["location"] == "/login"


def test_register_login_logout_and_argon2id(client, app):
    r = register(client, "alice")
    assert r.status_code == 303 and r.headers["location"] == "/upload"
    page = client.get("/upload")
    assert "alice" in page.text and "RESEARCH TOOL, NOT A DIAGNOSIS" in page.text
    with app.state.ctx.sessions() as s:
        stored = s.scalar(select(DB.User.password_hash).where(DB.User.username == "alice"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert register(client, "alice").status_code == 409  # taken
    r = client.post("/logout", data={"csrf_token": csrf_of(client, "/upload")}, follow_redirects=False)
    assert r.status_code == 303 and client.get("/upload", follow_redirects=False).status_code == 303
    bad = login(client, "alice", "wrong password")
    assert bad.status_code == 401 and "wrong username or password" in bad.text
    assert login(client, "alice").status_code == 303
    assert client.get("/upload").status_code == 200


def test_session_cookie_is_signed_httponly_samesite(app):
    with client_of(app) as c:
        r = register(c, "carol")
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        value = c.cookies.get(SESSION_COOKIE)
        assert c.get("/upload", follow_redirects=False).status_code == 200
        payload, _, signature = value.partition(".")
        forged = payload[:-2] + ("AA" if not payload.endswith("AA") else "BB") + "." + signature
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, forged)
        assert c.get("/upload", follow_redirects=False).status_code == 303  # tampered: not logged in
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, value)
        assert c.get("/upload", follow_redirects=False).status_code == 200  # the genuine cookie still works


def test_secret_key_generated_once_with_owner_only_permissions(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_SECRET_KEY", raising=False)
    s = Settings(data_dir=tmp_path / "d")
    key = secret_key(s)
    path = tmp_path / "d" / "secret_key"
    assert len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key(s) == key  # reused, not regenerated
    monkeypatch.setenv("CXR_SECRET_KEY", "x" * 40)
    assert secret_key(Settings(data_dir=tmp_path / "d")) == "x" * 40


def test_csrf_refused_on_every_form(client, app):
    register(client, "dave")
    for path, data in [("/logout", {}), ("/results/abc/delete", {}), ("/account/delete", {"password": PASSWORD})]:
        for token in (None, "forged-token"):
            body = dict(data, **({"csrf_token": token} if token else {}))
            r = client.post(path, data=body, follow_redirects=False)
            assert r.status_code == 403 and "CSRF" in r.text, (path, token, r.status_code)
    r = upload(client, [("x.png", png())], token="forged-token")
    assert r.status_code == 403 and count(app, DB.Prediction) == 0 and not stored_files(app)
    # a token from another session is refused too, also on the login and register forms
    with client_of(app) as other:
        foreign = csrf_of(other)
        r = other.post("/login", data={"username": "dave", "password": PASSWORD, "csrf_token": "nope"})
        assert r.status_code == 403
    r = client.post("/account/delete", data={"password": PASSWORD, "csrf_token": foreign}, follow_redirects=False)
    assert r.status_code == 403 and count(app, DB.User) == 1


def test_failed_login_limit_per_account_survives_a_second_worker(app, settings):
    with client_of(app) as c:
        register(c, "erin")
    with client_of(app) as c:
        for _ in range(settings.max_failures_account):
            assert login(c, "erin", "wrong-password").status_code == 401
        r = login(c, "erin")  # the right password, but the account is locked for the window
        assert r.status_code == 429
        retry = int(r.headers["retry-after"])
        assert 0 < retry <= settings.login_window_s
        assert "Too many failed logins for this account" in r.text and "Try again after" in r.text
        api = c.post("/api/token", json={"username": "erin", "password": PASSWORD})
        assert api.status_code == 429 and int(api.headers["retry-after"]) > 0
    second = create_app(settings, migrate=False)  # another worker process: same database, fresh memory
    try:
        with client_of(second) as c:
            assert login(c, "erin").status_code == 429
    finally:
        second.state.engine.dispose()
    with app.state.ctx.sessions() as s:  # the window ends: the account may try again
        s.execute(update(DB.LoginFailure).values(window_start=time.time() - settings.login_window_s - 1))
        s.commit()
    with client_of(app) as c:
        assert login(c, "erin").status_code == 303


def test_failed_login_limit_per_address(app, settings):
    with client_of(app) as c:
        register(c, "frank")
        for i in range(settings.max_failures_address):  # a different unknown name each time
            assert login(c, f"nobody{i}", "x" * 8).status_code == 401
        r = login(c, "frank")
        assert r.status_code == 429 and "your address" in r.text and int(r.headers["retry-after"]) > 0


# --------------------------------------------------------------------------- predictions and isolation

def test_page_upload_shows_score_decision_caution_and_track_record(client, app, app_outputs):
    register(client, "gina")
    r = upload(client, [("chest.png", png())])
    assert r.status_code == 303 and r.headers["location"].startswith("/results/")
    page = client.get(r.headers["location"]).text
    assert "P(covid) = " in page and "Decision:" in page and "the threshold chosen on validation" in page
    assert "caution: trained on adult COVID-19 vs mostly pediatric normals" in page
    assert "Track record: On its internal test set (40 images of 20 patients" in page
    assert "from Hannover, a hospital it never saw" in page and "RESEARCH TOOL, NOT A DIAGNOSIS" in page
    assert "chest.png" in page
    assert count(app, DB.Prediction) == 1 and len(stored_files(app)) == 1
    rid = r.headers["location"].rsplit("/", 1)[1]
    assert client.get(f"/results/{rid}/image").headers["content-type"] == "image/png"
    hist = client.get("/history").text
    assert rid in hist and "chest.png" in hist


def test_several_files_in_one_upload_one_bad(client, app):
    register(client, "hank")
    r = upload(client, [("a.png", png(seed=1)), ("b.jpg", jpeg()), ("notes.png", b"not an image\n")])
    assert r.status_code == 200
    assert "a.png" in r.text and "b.jpg" in r.text
    assert "notes.png: not scored: the file is not in any image format PIL knows" in r.text
    assert count(app, DB.Prediction) == 2 and len(stored_files(app)) == 2


def test_api_flow_and_isolation(client, app):
    a, b = api_user(client, "ann"), api_user(client, "bob")
    r = api_upload(client, a, "x.png", png())
    assert r.status_code == 201, r.text
    body = r.json()
    assert {"id", "model", "score", "decision", "threshold", "caution"} <= set(body)
    assert body["model"] == "logreg_pixels" and body["threshold"] == 0.5
    assert body["decision"] == ("covid" if body["score"] >= 0.5 else "normal")
    assert body["caution"].startswith("caution:") and body["disclaimer"] == "research tool, not a diagnosis"
    assert body["track_record"]["sentence"].startswith("Track record: On its internal test set")
    assert r.headers["location"].endswith(f"/api/predictions/{body['id']}")
    rid = body["id"]
    assert client.get(f"/api/predictions/{rid}", headers=a).json()["id"] == rid
    assert client.get(f"/api/v1/predictions/{rid}", headers=a).status_code == 200  # the versioned path
    # bob can neither read, list, nor delete ann's result: 404 exactly like an unknown id
    assert client.get(f"/api/predictions/{rid}", headers=b).status_code == 404
    assert client.get("/api/predictions/" + "0" * 32, headers=b).status_code == 404
    assert client.get("/api/predictions", headers=b).json() == {"predictions": []}
    assert client.delete(f"/api/predictions/{rid}", headers=b).status_code == 404
    assert client.get(f"/api/predictions/{rid}", headers=a).status_code == 200
    assert client.get(f"/api/predictions/{rid}").status_code == 401  # no token
    assert client.get(f"/api/predictions/{rid}", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert [p["id"] for p in client.get("/api/predictions", headers=a).json()["predictions"]] == [rid]
    assert client.delete(f"/api/predictions/{rid}", headers=a).status_code == 204
    assert count(app, DB.Prediction) == 0 and not stored_files(app)
    assert client.get(f"/api/predictions/{rid}", headers=a).status_code == 404


def test_pages_refuse_another_users_result(app):
    with client_of(app) as ca, client_of(app) as cb:
        register(ca, "amy")
        rid = upload(ca, [("x.png", png())]).headers["location"].rsplit("/", 1)[1]
        register(cb, "ben")
        for path in (f"/results/{rid}", f"/results/{rid}/image", f"/results/{rid}/overlay.png"):
            assert cb.get(path).status_code == 404, path
            assert ca.get(path).status_code in (200, 404 if path.endswith("overlay.png") else 200), path
        r = cb.post(f"/results/{rid}/delete", data={"csrf_token": csrf_of(cb, "/upload")}, follow_redirects=False)
        assert r.status_code == 404 and count(app, DB.Prediction) == 1
        assert rid not in cb.get("/history").text and rid in ca.get("/history").text
        r = ca.post(f"/results/{rid}/delete", data={"csrf_token": csrf_of(ca, "/upload")}, follow_redirects=False)
        assert r.status_code == 303 and count(app, DB.Prediction) == 0 and not stored_files(app)


def test_account_deletion_leaves_no_rows_and_no_files(app):
    with client_of(app) as c:
        keep = api_user(c, "stay")
        gone = api_user(c, "leave")
        assert api_upload(c, keep, "k.png", png()).status_code == 201
        for i in range(2):
            assert api_upload(c, gone, f"g{i}.png", png(seed=i)).status_code == 201
        assert len(stored_files(app)) == 3
        assert c.delete("/api/account", headers=gone).status_code == 204
        with app.state.ctx.sessions() as s:
            assert s.scalar(select(func.count()).select_from(DB.User).where(DB.User.username == "leave")) == 0
            assert s.scalar(select(func.count()).select_from(DB.Prediction)) == 1
            assert s.scalar(select(func.count()).select_from(DB.ApiToken)) == 1  # only stay's
        assert len(stored_files(app)) == 1
        assert c.get("/api/predictions", headers=gone).status_code == 401  # the token went with the account
        # the page version asks for the password first
        register(c, "paged")
        upload(c, [("p.png", png())])
        tok = csrf_of(c, "/account")
        r = c.post("/account/delete", data={"password": "wrong-one", "csrf_token": tok}, follow_redirects=False)
        assert r.status_code == 401 and count(app, DB.User) == 2
        r = c.post("/account/delete", data={"password": PASSWORD, "csrf_token": tok}, follow_redirects=False)
        assert r.status_code == 200 and "Account deleted" in r.text
        assert count(app, DB.User) == 1 and count(app, DB.Prediction) == 1 and len(stored_files(app)) == 1
        assert c.get("/upload", follow_redirects=False).status_code == 303


# --------------------------------------------------------------------------- bad input

BAD = [  # (file name, its bytes, API status, message fragment)
    ("notes.png", lambda: b"just text\n", 422, "not in any image format PIL knows"),
    ("empty.png", lambda: b"", 422, "zero bytes"),
    ("cut.png", truncated_png, 422, "does not decode"),
    ("scan.dcm", png, 415, "DICOM, which is not supported: convert it to PNG first"),   # DICOM by its name
    ("scan.png", dicom_bytes, 415, "DICOM, which is not supported"),                     # DICOM by its content
    ("bomb.png", lambda: huge_header_png(60000, 60000), 422, "pixels"),  # over Pillow's decompression-bomb limit
    ("big.png", lambda: huge_header_png(8000, 8000), 422, "more than this server's limit"),  # over the app's
]


@pytest.mark.parametrize("name,make,status,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_get_a_message_and_a_4xx(client, app, name, make, status, fragment):
    data = make()
    headers = api_user(client, "user1")
    r = api_upload(client, headers, name, data)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"] and name in r.json()["detail"] and "Traceback" not in r.text
    assert "/images/" not in r.json()["detail"]  # the stored path is never shown
    register(client, "user2")
    page = upload(client, [(name, data)])
    assert 400 <= page.status_code < 500 and fragment in html.unescape(page.text) and "Traceback" not in page.text
    assert count(app, DB.Prediction) == 0 and not stored_files(app)
    assert client.get("/health").status_code == 200  # still serving
    assert api_upload(client, headers, "good.png", png()).status_code == 201


def test_size_limits_answer_413(client, app, settings):
    headers = api_user(client, "big")
    too_big = b"\x89PNG" + b"\x00" * (settings.max_upload_bytes + 10)
    r = api_upload(client, headers, "huge.png", too_big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    register(client, "bigpage")
    r = upload(client, [("huge.png", too_big)])
    assert r.status_code == 413 and "limit" in r.text
    # a request body over the whole-request cap is refused by its Content-Length, before it is read
    r = client.post("/api/predictions", headers={**headers, "content-type": "application/octet-stream"},
                    content=b"\x00" * (settings.max_request_bytes + 1))
    assert r.status_code == 413
    r = upload(client, [(f"{i}.png", png(seed=i)) for i in range(settings.max_files + 1)])
    assert r.status_code == 400 and f"at most {settings.max_files} images" in r.text
    assert count(app, DB.Prediction) == 0 and not stored_files(app)
    assert api_upload(client, headers, "ok.png", png()).status_code == 201


def test_nothing_a_user_sends_becomes_a_path(client, app, settings):
    headers = api_user(client, "mallory")
    r = api_upload(client, headers, "../../../../etc/evil.png", png())
    assert r.status_code == 201 and r.json()["filename"] == "evil.png"
    files = stored_files(app)
    assert len(files) == 1 and re.fullmatch(r"[0-9a-f]{32}\.upload", next(iter(files)))
    assert [p.name for p in settings.images_dir.iterdir()] == list(files)
    r = api_upload(client, headers, "x.png", png(), model="../custom_cnn")
    assert r.status_code == 400 and "unknown model" in r.json()["detail"]
    with pytest.raises(ValueError):
        app.state.ctx.store.path_of("../secret_key")


# --------------------------------------------------------------------------- overlay (a CNN, Keras loaded)

def test_grad_cam_overlay_through_the_api(client, app):
    headers = api_user(client, "olga")
    r = api_upload(client, headers, "x.png", png(), model="custom_cnn", overlay="true")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["has_overlay"] and body["overlay_url"]
    img = client.get(body["overlay_url"], headers=headers)
    assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
    other = api_user(client, "peter")
    assert client.get(body["overlay_url"], headers=other).status_code == 404
    assert len(stored_files(app)) == 2  # the image and its overlay


# --------------------------------------------------------------------------- schema and structure

def test_migrations_build_exactly_the_models(app):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    engine = app.state.engine
    assert DB.current_revision(engine) == "0001"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), DB.Base.metadata)
    assert diff == [], diff
    if engine.url.get_backend_name() == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    DB.downgrade(engine, "base")
    assert DB.current_revision(engine) is None
    DB.migrate(engine)
    assert DB.current_revision(engine) == "0001"


def test_only_the_scoring_adapter_imports_the_rest_of_cxrbook():
    folder = Path(DB.__file__).parent
    reaching = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            elif isinstance(node, ast.ImportFrom):  # relative: level 1 is cxrbook.app, 2 or more leaves it
                mods = ["cxrbook." + "." * node.level + (node.module or "")] if node.level >= 2 else []
            else:
                mods = []
            for m in mods:
                if (m == "cxrbook" or m.startswith("cxrbook.")) and not m.startswith("cxrbook.app"):
                    reaching.setdefault(path.name, set()).add(m)
    reaching.get("settings.py", set()).discard("cxrbook.config")  # where outputs/ is: the workbook's one rule
    reaching = {k: v for k, v in reaching.items() if v}
    assert set(reaching) == {"scoring.py"}, reaching


def test_serve_command_migrates_and_reports(tmp_path, app_models):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "cxrbook", "serve", "--migrate-only", "--data", str(tmp_path / "d"),
                        "--models", str(app_models)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "at revision 0001" in r.stdout and "2 model(s)" in r.stdout
    assert (tmp_path / "d" / "cxrbook_app.sqlite3").is_file()
    bad = subprocess.run([sys.executable, "-m", "cxrbook", "serve", "--migrate-only", "--db",
                          "postgresql+psycopg://nobody:x@127.0.0.1:1/none"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "cannot prepare the database" in bad.stderr and "Traceback" not in bad.stderr
