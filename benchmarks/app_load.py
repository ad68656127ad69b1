"""Benchmark 6: the web app (``python -m cxrbook serve``) under load, on SQLite and on PostgreSQL.

A real server in a subprocess on 127.0.0.1 (a free port, ``--workers`` processes; no other address is
ever contacted), over a tiny custom CNN built here (``make_models``: one epoch on generated images,
exported to ONNX at save; a benchmark model, not a result). ``users`` concurrent API clients (asyncio +
httpx) register, take a bearer token, then each uploads ``uploads`` generated PNG X-rays one after the
other (``POST /api/predictions``, scores only: no Grad-CAM overlay). Reported per database:
requests/s over the upload phase, latency p50/p95/max per upload, errors (any answer but 201, or no
answer), and the storage check: every accepted upload has exactly one row and one stored file (nothing
lost, nothing duplicated, no stray file). Goal on the 2-core machine: p95 <= 1 s, zero errors, zero lost.

PostgreSQL: a throwaway database is created on the server named by ``CXR_TEST_PG_URL`` (a role with
CREATEDB) and dropped afterwards; without a reachable server that backend is "skipped" with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
GOAL_P95_S = 1.0
PG_ENV = "CXR_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg://cxrbook:cxrbook@127.0.0.1:5432/cxrbook_test"
SIDECAR = {"classes": ["normal", "covid"], "threshold": 0.5, "task": "covid_vs_normal", "normals": "all",
           "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False}}


# --------------------------------------------------------------------------- models and images

def make_models(folder: Path, image_size: int = 64, seed: int = 0, cnn: bool = True) -> dict[str, Path]:
    """A tiny custom CNN (``custom_cnn.keras`` + ``.onnx``; Grad-CAM capable) and a pixel logistic regression
    (``logreg_pixels.joblib``), trained on generated images: benchmark and test models, never results.
    Reuses the files when ``folder`` already has them."""
    import numpy as np

    from cxrbook.data.synthetic import chest_image
    folder.mkdir(parents=True, exist_ok=True)
    out = {"custom_cnn": folder / "custom_cnn.keras", "logreg_pixels": folder / "logreg_pixels.joblib"}
    rng = np.random.default_rng(seed)
    y = np.arange(64) % 2
    x = np.stack([chest_image(("normal", "covid")[i], rng, image_size) for i in y])[..., None]
    if not out["logreg_pixels"].with_suffix(".onnx").is_file():
        from cxrbook.evaluation import experiment
        clf = experiment.fit_pixel_logreg(x, y, size=8, seed=seed)
        experiment.save_pixel_logreg(clf, out["logreg_pixels"], {
            **SIDECAR, "image_size": image_size, "thumbnail_size": 8, "weights": "none (classical)",
            "backbone": "logreg_pixels"})
    if cnn and not out["custom_cnn"].with_suffix(".onnx").is_file():
        from cxrbook.models import architectures as models
        from cxrbook.models import training
        model = models.custom_cnn(image_size, augment=False, seed=seed, n_classes=2)
        # 10 epochs: the generated classes are easy to tell apart; 2 left a constant-score model (P=0.49 for all)
        training.fit(model, x, y, x, y, epochs=10, batch_size=8, verbose=0)
        training.save_model(model, out["custom_cnn"], {**SIDECAR, "image_size": image_size,
                                                       "weights": "none (test)", "backbone": "custom_cnn"}, onnx=True)
    return out if cnn else {"logreg_pixels": out["logreg_pixels"]}


def png_bytes(label: str = "covid", size: int = 512, seed: int = 0) -> bytes:
    """A generated chest X-ray as PNG bytes."""
    import io

    import numpy as np
    from PIL import Image

    from cxrbook.data.synthetic import chest_image
    buf = io.BytesIO()
    Image.fromarray(chest_image(label, np.random.default_rng(seed), size)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- databases

def pg_admin_url() -> str:
    return os.environ.get(PG_ENV) or DEFAULT_PG_URL


def pg_reachable(url: str | None = None) -> tuple[bool, str]:
    """(True, "") when a PostgreSQL server answers at ``url`` (default ``$CXR_TEST_PG_URL``), else (False, why)."""
    from sqlalchemy import create_engine, text
    url = url or pg_admin_url()
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True, ""
    except Exception as e:  # noqa: BLE001 - any failure means: not reachable here
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@contextlib.contextmanager
def temporary_pg_database(admin_url: str | None = None) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``admin_url``; yields its URL, drops it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    admin = make_url(admin_url or pg_admin_url())
    name = f"cxr_app_{secrets.token_hex(6)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


# --------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m cxrbook serve`` on 127.0.0.1 in a subprocess; ``url`` once /health answers."""

    def __init__(self, models: Path, data: Path, outputs: Path, db_url: str | None = None, workers: int = 1,
                 log: Path | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "cxrbook", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", str(workers), "--models", str(models), "--data", str(data),
                    "--outputs", str(outputs), "--log-level", "warning"]
        if db_url:
            self.cmd += ["--db", db_url]
        self.log = log or data / "server.log"
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        import httpx
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the server did not answer /health within 120 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


# --------------------------------------------------------------------------- the load

async def _token(client, base: str, name: str, password: str, errors: list) -> dict | None:
    r = await client.post(f"{base}/api/register", json={"username": name, "password": password})
    if r.status_code != 201:
        errors.append(f"register {name}: {r.status_code} {r.text[:200]}")
        return None
    r = await client.post(f"{base}/api/token", json={"username": name, "password": password})
    if r.status_code != 200:
        errors.append(f"token {name}: {r.status_code} {r.text[:200]}")
        return None
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _uploads(client, base: str, name: str, headers: dict, uploads: int, image: bytes, model: str,
                   latencies: list, errors: list, accepted: dict) -> None:
    accepted[name] = []
    for k in range(uploads):
        t0 = time.perf_counter()
        try:
            r = await client.post(f"{base}/api/predictions", headers=headers, data={"model": model},
                                  files={"file": (f"xray_{k}.png", image, "image/png")})
        except Exception as e:  # noqa: BLE001 - a failed request is an error of the run, not of the benchmark
            errors.append(f"upload {name} #{k}: {type(e).__name__}: {e}")
            continue
        latencies.append(time.perf_counter() - t0)
        if r.status_code == 201:
            accepted[name].append(r.json()["id"])
        else:
            errors.append(f"upload {name} #{k}: {r.status_code} {r.text[:200]}")


async def load(base: str, users: int, uploads: int, image: bytes, model: str) -> dict:
    """Register ``users`` API clients and take their tokens (untimed), then time ``uploads`` sequential uploads
    per client, every client at once."""
    import httpx
    latencies: list[float] = []
    errors: list[str] = []
    accepted: dict[str, list[str]] = {}
    run = secrets.token_hex(3)
    names = [f"load{run}_{i:03d}" for i in range(users)]
    limits = httpx.Limits(max_connections=users + 5, max_keepalive_connections=users + 5)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t_setup = time.perf_counter()
        headers = await asyncio.gather(*(_token(client, base, n, "load-password-1", errors) for n in names))
        setup_s = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        await asyncio.gather(*(_uploads(client, base, n, h, uploads, image, model, latencies, errors, accepted)
                               for n, h in zip(names, headers) if h is not None))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "accepted": accepted, "wall": wall, "setup_seconds": setup_s}


def check_storage(db_url: str, images_dir: Path, accepted: dict[str, list[str]]) -> dict:
    """Every accepted upload has exactly one row, owned by its user, and one stored file; no other row or file."""
    from sqlalchemy import create_engine, text
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("select p.id, u.username, p.image_name from predictions p "
                                 "join users u on u.id = p.user_id")).all()
    engine.dispose()
    ids = [r[0] for r in rows]
    owner = {r[0]: r[1] for r in rows}
    want = {i: user for user, got in accepted.items() for i in got}
    files = {p.name for p in images_dir.iterdir() if p.name.endswith(".upload")} if images_dir.is_dir() else set()
    names = [r[2] for r in rows]
    return {"accepted": len(want), "rows": len(rows), "files": len(files),
            "lost": sum(1 for i in want if i not in owner),
            "duplicated": (len(ids) - len(set(ids))) + (len(names) - len(set(names))),
            "unexpected_rows": sum(1 for i in owner if i not in want),
            "wrong_owner": sum(1 for i, u in want.items() if i in owner and owner[i] != u),
            "rows_without_file": sum(1 for n in names if n not in files),
            "files_without_row": len(files - set(names))}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def run_backend(name: str, db_url: str | None, workdir: Path, models_dir: Path, users: int, uploads: int,
                workers: int, model: str, image: bytes) -> dict:
    """One database: a fresh server and data folder, the load, then the storage check."""
    data = workdir / f"app_data_{name}"
    outputs = workdir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    with Server(models_dir, data, outputs, db_url=db_url, workers=workers) as server:
        warm = asyncio.run(load(server.url, min(workers * 2, users), 1, image, model))  # loads the model per worker
        res = asyncio.run(load(server.url, users, uploads, image, model))
    accepted = {**warm["accepted"], **res["accepted"]}
    url = db_url or f"sqlite:///{(data / 'cxrbook_app.sqlite3').resolve()}"
    storage = check_storage(url, data / "images", accepted)
    lat = res["latencies"]
    n_ok = sum(len(v) for v in res["accepted"].values())
    p95 = percentile(lat, 95) if lat else None
    out = {"status": "ok", "database": "postgresql" if name == "postgresql" else "sqlite",
           "requests": users * uploads, "accepted": n_ok, "errors": len(res["errors"]) + len(warm["errors"]),
           "error_examples": (warm["errors"] + res["errors"])[:5],
           "wall_seconds": round(res["wall"], 3), "setup_seconds": round(res["setup_seconds"], 3),
           "requests_per_second": round(n_ok / res["wall"], 2) if res["wall"] > 0 else None,
           "latency_seconds": None if not lat else {
               "median": round(statistics.median(lat), 4), "p50": round(percentile(lat, 50), 4),
               "p95": round(p95, 4), "min": round(min(lat), 4), "max": round(max(lat), 4),
               "mean": round(statistics.fmean(lat), 4), "n": len(lat), "unit": "s",
               "goal": f"p95 <= {GOAL_P95_S:g} s", "met": bool(p95 <= GOAL_P95_S)},
           "storage": storage}
    out["nothing_lost"] = (storage["lost"] == 0 and storage["duplicated"] == 0 and storage["unexpected_rows"] == 0
                           and storage["wrong_owner"] == 0 and storage["rows_without_file"] == 0
                           and storage["files_without_row"] == 0 and storage["rows"] == storage["accepted"])
    out["goal_met"] = bool(out["latency_seconds"] and out["latency_seconds"]["met"] and out["errors"] == 0
                           and out["nothing_lost"])
    return out


def run(workdir: Path, users: int = 20, uploads: int = 10, workers: int = 2, image_size: int = 64,
        image_side: int = 512, model: str = "custom_cnn", backends: tuple[str, ...] = ("sqlite", "postgresql"),
        models_dir: Path | None = None, seed: int = 0) -> dict:
    """The ``app_load`` JSON section: one entry per database (PostgreSQL "skipped" when no server answers)."""
    from benchmarks.common import say
    if models_dir is None:
        models_dir = workdir / "app_models"
        say(f"[app_load] building the benchmark models at {image_size} px (untimed)")
        make_models(models_dir, image_size=image_size, seed=seed)
    image = png_bytes("covid", image_side, seed)
    result: dict = {"status": "ok",
                    "settings": {"users": users, "uploads_per_user": uploads, "server_workers": workers,
                                 "model": model, "model_image_size": image_size, "upload_png_side_px": image_side,
                                 "upload_bytes": len(image), "overlay": False, "client": "asyncio + httpx",
                                 "address": "127.0.0.1"},
                    "goal": f"p95 <= {GOAL_P95_S:g} s per prediction without overlay, zero errors, zero lost",
                    "backends": {}}
    for name in backends:
        if name == "postgresql":
            ok, why = pg_reachable()
            if not ok:
                result["backends"][name] = {"status": "skipped", "reason": f"no PostgreSQL server at ${PG_ENV} ({why})"}
                say(f"[app_load] postgresql skipped: {why}")
                continue
            with temporary_pg_database() as url:
                entry = run_backend(name, url, workdir, models_dir, users, uploads, workers, model, image)
        else:
            entry = run_backend(name, None, workdir, models_dir, users, uploads, workers, model, image)
        result["backends"][name] = entry
        lat = entry["latency_seconds"] or {}
        say(f"[app_load] {name:<10} {entry['accepted']}/{entry['requests']} accepted, {entry['errors']} errors, "
            f"{entry['requests_per_second']} req/s, p50 {lat.get('p50')} s, p95 {lat.get('p95')} s, "
            f"storage {'consistent' if entry['nothing_lost'] else 'INCONSISTENT'} {entry['storage']}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.app_load``: the app load test alone, printed as JSON."""
    import argparse
    import json
    import tempfile
    p = argparse.ArgumentParser(prog="python -m benchmarks.app_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--uploads", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backends", default="sqlite,postgresql")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cxrbook-app-load-") as d:
        res = run(Path(d), a.users, a.uploads, a.workers, backends=tuple(a.backends.split(",")))
    print(json.dumps(res, indent=2))
    return 0 if all(b.get("goal_met") or b.get("status") == "skipped" for b in res["backends"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
