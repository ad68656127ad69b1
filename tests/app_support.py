"""Helpers for the app's tests (tests/test_app*.py): models, records, images and databases, all generated here.

Not a test module (pytest collects ``test_*.py`` only). The PostgreSQL tests run against the server named by
``CXR_TEST_PG_URL`` (a role with CREATEDB; ``.ci/run`` installs, starts and exports one), else the default
local URL; they skip when no server answers, except under CI (``CI`` set, as ``.ci/run`` runs), where they fail.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.app_load import make_models, pg_reachable, temporary_pg_database

__all__ = ["make_models", "temporary_pg_database", "in_ci", "need", "pg_url_or_skip", "models_dir", "write_records",
           "png", "jpeg", "truncated_png", "huge_header_png", "dicom_bytes"]


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty/0/false): there the PostgreSQL and browser tests must run."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(module: str):
    """Import ``module``, or skip (locally) / fail (CI): the app's packages must be installed where CI runs."""
    try:
        return __import__(module)
    except ImportError as e:
        if in_ci():
            pytest.fail(f"{module} is not installed ({e}); the app's tests must run in CI", pytrace=False)
        pytest.skip(f"{module} is not installed", allow_module_level=True)


def pg_url_or_skip() -> None:
    """Skip (locally) or fail (CI) when no PostgreSQL server answers."""
    ok, why = pg_reachable()
    if not ok:
        msg = f"no PostgreSQL server reachable at $CXR_TEST_PG_URL or the default local URL ({why})"
        if in_ci():
            pytest.fail(msg + "; .ci/run must install and start one", pytrace=False)
        pytest.skip(msg)


def models_dir(tmp_path_factory) -> Path:
    """The test models (built once per test session, then reused by every app test module)."""
    folder = tmp_path_factory.getbasetemp() / "app_models"
    make_models(folder, image_size=64)
    return folder


def write_records(outputs: Path, model_path: Path, external: bool = True, seed: int = 0) -> None:
    """``outputs/metrics/<model>.json`` (and ``external.json``) from the model's real scores on generated
    images, through the workbook's own ``metrics.evaluate`` and schema writers: no number typed by hand."""
    from cxrbook.evaluation import metrics as M
    from cxrbook.evaluation import records as R
    from cxrbook.external.text import external_paragraph
    from cxrbook.external.scores import validate_external
    from cxrbook.data.pipeline import to_rgb_float
    from cxrbook.inference.saved_model import load_model
    from cxrbook.data.synthetic import chest_image
    scorer = load_model(model_path)
    size, classes, t = scorer.image_size, scorer.classes, scorer.threshold
    rng = np.random.default_rng(seed)

    def scored(labels):
        x = np.stack([chest_image(lab, rng, size) for lab in labels])[..., None]
        return scorer.probabilities(to_rgb_float(x))[:, 1]

    labels = ["normal", "covid"] * 20
    y = np.array([classes.index(lab) for lab in labels])
    pid = np.arange(len(y)) // 2
    report = M.evaluate(y, scored(labels), pid, classes, threshold=t, n_boot=200, seed=seed)
    record = R.metrics_record(report, model=model_path.stem, task="covid_vs_normal", weights="none (test)",
                              threshold_rule="youden on validation")
    R.save_metrics(record, outputs / "metrics" / f"{model_path.stem}.json")
    if not external:
        return
    hann, nih = ["covid"] * 30, ["normal"] * 40
    ys = np.array([1] * len(hann) + [0] * len(nih))
    s = np.concatenate([scored(hann), scored(nih)])
    pids = np.arange(len(ys)) // 3
    sens = M.evaluate(ys[:30], s[:30], pids[:30], classes, threshold=t, n_boot=200, seed=seed)["metrics"]
    spec = M.evaluate(ys[30:], s[30:], pids[30:], classes, threshold=t, n_boot=200, seed=seed)["metrics"]
    union = M.evaluate(ys, s, pids, classes, threshold=t, n_boot=200, seed=seed)["metrics"]
    entry = {"model": model_path.stem, "display_name": model_path.stem, "weights": "none (test)", "normals": "all",
             "image_size": size, "threshold": t,
             "internal": {m: record["metrics"][m] for m in ("sensitivity", "specificity", "roc_auc")},
             "external": {"sensitivity": sens["sensitivity"], "specificity": spec["specificity"],
                          "roc_auc": union["roc_auc"]}}
    ext = {"schema_version": 1, "task": "covid_vs_normal", "profile": "test", "seed": seed, "n_bootstrap": 200,
           "collections": {"hannover": {"n_images": 30, "n_patients": 10, "label": "covid", "measures": "sensitivity"},
                           "nih": {"n_images": 40, "n_patients": 14, "label": "normal", "measures": "specificity",
                                   "image_side_px": 64}},
           "models": [entry]}
    ext["paragraph"] = external_paragraph(ext)
    validate_external(ext)
    (outputs / "external.json").write_text(json.dumps(R.to_jsonable(ext), indent=2, sort_keys=True))


# --------------------------------------------------------------------------- images

def png(size: int = 128, seed: int = 0, label: str = "covid") -> bytes:
    from cxrbook.data.synthetic import chest_image
    buf = io.BytesIO()
    Image.fromarray(chest_image(label, np.random.default_rng(seed), size)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size: int = 128, seed: int = 1) -> bytes:
    from cxrbook.data.synthetic import chest_image
    g = chest_image("normal", np.random.default_rng(seed), size)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([g, g, g])).save(buf, "JPEG")
    return buf.getvalue()


def truncated_png() -> bytes:
    """A real PNG cut in the middle of its pixel data."""
    data = png(256, seed=3)
    return data[: len(data) // 2]


def huge_header_png(width: int, height: int) -> bytes:
    """A small file whose PNG header claims ``width`` x ``height`` pixels (a decompression bomb's front)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom_bytes() -> bytes:
    """The DICOM preamble and magic (128 zero bytes, then ``DICM``): what ``images.is_dicom`` looks for."""
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00"
