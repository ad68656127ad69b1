"""What a student meets in JupyterLab (issue 11, "Students in JupyterLab" items 2-5).

* 07's prediction section runs right after the parameters and setup cells, with any saved model
  (``model_path``), taking its example image from ``splits.csv``, not from the audit's ``data``;
* 07's training prints one line per epoch instead of staying silent for minutes;
* scoring several freshly trained models triggers no ``tf.function`` retracing (the cause of 07's two
  TensorFlow warning paragraphs);
* every score, overlay caption and upload-widget answer carries the confound caution that matches the
  model's training normals (``normals`` in its sidecar, "unknown" when absent);
* no figure cell of 07 echoes the ``PosixPath`` that ``savefig`` returns.
"""

from __future__ import annotations

import ast
import builtins
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbook.models import overlay as O
from cxrbook.inference import predict as P
from cxrbook.inference.saved_model import load_model
from cxrbook.inference import widget as PN
from cxrbook.models import sidecar as S
from cxrbook.config import Paths, notebooks_dir
from cxrbook.data.pipeline import CachedData, SplitArrays
from cxrbook.workflow.runner import run
from cxrbook.data.synthetic import chest_image

NB07 = notebooks_dir() / "07_trust_audit.ipynb"
SIZE = 32


def _cells(nb_path: Path = NB07) -> list[dict]:
    return json.loads(nb_path.read_text())["cells"]


def _tagged(tag: str, nb_path: Path = NB07) -> list[dict]:
    return [c for c in _cells(nb_path) if tag in c.get("metadata", {}).get("tags", [])]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _setup_cells() -> tuple[dict, dict]:
    """07's parameters cell and the setup cell right after it."""
    cells = [c for c in _cells() if c["cell_type"] == "code"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    return cells[i], cells[i + 1]


def _assigned(tree: ast.AST) -> set[str]:
    """Names a cell binds: assignments, imports, loop targets, function/class definitions."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
    return out


def _loaded(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


# --------------------------------------------------------------------------- 07's prediction section, statically

def test_prediction_cells_use_nothing_the_audit_cells_define():
    """The prediction and upload cells may read only what the parameters and setup cells (or they
    themselves) define, plus builtins and IPython's ``display``: never ``data`` or another audit result."""
    params, setup = _setup_cells()
    prediction = _tagged("prediction")
    assert len(prediction) >= 2, "07 must tag its prediction and upload cells with 'prediction'"
    pred_ids = {c["id"] for c in prediction}
    audit_defined = set()
    for c in _cells():
        if c["cell_type"] == "code" and c["id"] not in pred_ids | {params["id"], setup["id"]}:
            audit_defined |= _assigned(ast.parse(_source(c)))
    available = _assigned(ast.parse(_source(params))) | _assigned(ast.parse(_source(setup)))
    available |= set(dir(builtins)) | {"display"}
    for c in prediction:
        tree = ast.parse(_source(c))
        available |= _assigned(tree)
        used = _loaded(tree)
        assert not used & (audit_defined - available), (c["id"], sorted(used & audit_defined))
        assert used <= available, (c["id"], sorted(used - available))
    assert "model_path" in _assigned(ast.parse(_source(params))), "07 needs a model_path parameter"


def _last_statement_is_savefig(source: str) -> bool:
    body = ast.parse(source).body
    if not body or not isinstance(body[-1], ast.Expr) or not isinstance(body[-1].value, ast.Call):
        return False
    f = body[-1].value.func
    return (f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")) == "savefig"


def test_no_figure_cell_of_07_echoes_the_saved_path():
    """A cell ending in ``savefig(...)`` shows ``PosixPath('.../07_x.png')`` above its figure."""
    assert _last_statement_is_savefig("savefig(fig, d, 'x')")  # the check itself sees the pattern
    offenders = [c["id"] for c in _cells() if c["cell_type"] == "code" and _last_statement_is_savefig(_source(c))]
    assert not offenders, offenders


# --------------------------------------------------------------------------- after 01-04 on generated data

@pytest.fixture(scope="module")
def after_04(fake_data, tmp_path_factory) -> Paths:
    """Outputs of notebooks 01-04 (smoke, generated data): splits.csv and the reference CNN, nothing of 07."""
    out = tmp_path_factory.mktemp("after04")
    run(profile="smoke", only=["01", "02", "03", "04"], data_dir=str(fake_data), output_dir=str(out),
        extra={"train_improved": False}, html_index=False)
    return Paths.resolve(str(fake_data), str(out), profile="smoke")


@pytest.mark.slow
def test_example_prediction_needs_only_setup(after_04):
    paths = after_04
    splits = pd.read_csv(paths.splits_csv)
    first = sorted(splits.loc[splits["split"] == "test", "image_path"])[0]
    side = json.loads((paths.models / "custom_cnn.json").read_text())
    assert side["normals"] == "all"  # notebook 04 records its training normals (the fake data has pediatric ones)

    df = PN.example_prediction(paths, "", "", task="covid_vs_normal", echo=None)
    assert list(df["status"]) == ["ok"] and df.loc[0, "file"] == first
    assert Path(df.loc[0, "overlay"]).is_file() and Path(df.loc[0, "overlay"]).parent == paths.outputs / "predictions"
    assert "normals=all" in df.loc[0, "caution"]
    label = splits.loc[splits["image_path"] == first, "label"].iloc[0]
    assert df.loc[0, "true_label"] == f"{label} (test split of splits.csv)"   # the image's truth beside its score
    assert df.loc[0, "track_record"].startswith("Track record: On its internal test set")
    assert not list(paths.models.glob("*.onnx")), "the notebooks score with Keras: no ONNX export (and no note)"

    other = sorted(splits.loc[splits["split"] == "train", "image_path"])[0]
    df = PN.example_prediction(paths, "custom_cnn.keras", other, echo=None)  # a bare name, looked up in models/
    assert df.loc[0, "file"] == other and df.loc[0, "status"] == "ok" and "(train split" in df.loc[0, "true_label"]
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        PN.example_prediction(paths, "nope.keras", "", echo=None)


@pytest.mark.slow
def test_prediction_cells_run_right_after_setup(after_04, capsys):
    """Execute 07's parameters cell, its setup cell and the tagged prediction cells, and nothing else."""
    params, setup = _setup_cells()
    ns: dict = {"display": lambda *objs, **kw: shown.extend(objs)}
    shown: list = []
    exec(_source(params), ns)
    ns.update(data_dir=str(after_04.data), output_dir=str(after_04.outputs), profile="smoke")
    exec(_source(setup), ns)
    for cell in _tagged("prediction"):
        exec(_source(cell), ns)
    result = ns["result"]
    assert list(result["status"]) == ["ok"] and result.loc[0, "predicted"] in ("normal", "covid")
    out = capsys.readouterr().out
    score_line = next(ln for ln in out.splitlines() if "P(covid)=" in ln)
    following = out.splitlines()[out.splitlines().index(score_line) + 1]
    assert following.strip().startswith("caution:") and "normals=all" in following


# --------------------------------------------------------------------------- training progress

def _data(n=(24, 8, 8), seed: int = 0) -> CachedData:
    rng = np.random.default_rng(seed)
    parts = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = np.array(["covid" if i % 2 else "normal" for i in range(count)])
        x = np.stack([chest_image(lab, rng, SIZE) for lab in labels])[..., None].astype(np.uint8)
        pids = np.array([f"{split}{i}" for i in range(count)])
        parts[split] = SplitArrays(x=x, labels=labels, patient_id=pids, image_path=np.array([f"/{p}.png" for p in pids]),
                                   source=np.array(["pediatric" if lab == "normal" else "cohen" for lab in labels]))
    return CachedData(**parts, key=f"students{seed}", path=None, hit=False, image_size=SIZE, clahe=False)


@pytest.mark.slow
def test_audit_training_prints_one_line_per_epoch(capsys):
    from cxrbook.audit import runs as AU
    data = _data()
    AU.train_and_score(data, ("normal", "covid"), arch="custom_cnn", epochs=2, batch_size=8, n_boot=20, name="demo")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("training demo: epoch")]
    assert [ln.split(",")[0] for ln in lines] == ["training demo: epoch 1/2", "training demo: epoch 2/2"]
    assert all("loss " in ln and "val_loss " in ln for ln in lines)
    AU.train_and_score(data, ("normal", "covid"), arch="custom_cnn", epochs=1, batch_size=8, n_boot=20, name="quiet",
                       progress=False)
    assert "training quiet" not in capsys.readouterr().out


def test_normals_of_the_training_data():
    from cxrbook.evaluation.experiment import normals_of
    data = _data(n=(6, 4, 4))
    assert normals_of(data) == "all"
    for arr in (data.train, data.val, data.test):
        arr.source[:] = "cohen"
    assert normals_of(data) == "adult"


# --------------------------------------------------------------------------- no tf.function retracing

class _Retracing(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "retracing" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.mark.slow
def test_scoring_fresh_models_triggers_no_retracing_warning():
    """07 scores each new model on validation then test (two sizes); with ``model.predict`` the sixth such
    call made TensorFlow print its 'triggered tf.function retracing' paragraph."""
    import keras
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function tracing is TensorFlow's")
    from cxrbook.models import training
    handler = _Retracing()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        rng = np.random.default_rng(0)
        for k in range(6):
            model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(2, 3, activation="relu"),
                                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
            for n in (7 + k, 11 + k):
                scores = training.predict_scores(model, rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32))
                assert scores.shape == (n,) and np.isfinite(scores).all()
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages[0][:200]


# --------------------------------------------------------------------------- the confound caution

def test_caution_wording_follows_the_sidecars_normals():
    all_, adult, unknown = (S.confound_warning(s) for s in ({"normals": "all"}, {"normals": "adult"}, {}))
    assert "mostly pediatric normals" in all_ and "may mean 'adult', not 'COVID-19'" in all_
    assert "normals=adult" in adult and "pediatric normals" not in adult
    assert "unknown" in unknown
    assert S.training_normals({"normals": "adult (07)"}) == "adult" and S.training_normals({"normals": None}) == "unknown"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny CNN saved three times: sidecar normals all, adult and absent."""
    from cxrbook.models import architectures as models
    from cxrbook.models import training
    d = tmp_path_factory.mktemp("tiny")
    model = models.custom_cnn(SIZE, augment=False, seed=0)
    base = {"classes": ["normal", "covid"], "image_size": SIZE, "threshold": 0.5, "task": "covid_vs_normal",
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False}, "weights": "none (test)"}
    return {k: training.save_model(model, d / f"m_{k}.keras", {**base, **({"normals": k} if k != "unknown" else {})})
            for k in ("all", "adult", "unknown")}


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "adult_no_finding.png"
    Image.fromarray(chest_image("normal", np.random.default_rng(3), 96)).save(path)
    return path


@pytest.mark.slow
def test_caution_beside_every_score_line_and_in_the_overlay(tiny_models, xray, tmp_path, monkeypatch):
    captions = []
    real_overlay = P.overlay_image
    monkeypatch.setattr(P, "overlay_image", lambda g, h, caption, **kw: captions.append(caption) or
                        real_overlay(g, h, caption, **kw))
    for normals, path in tiny_models.items():
        lines: list[str] = []
        rows = P.predict_files(load_model(path), [xray], out_dir=tmp_path / normals, echo=lines.append)
        caution = S.confound_warning({"normals": normals} if normals != "unknown" else {})
        assert rows[0]["caution"] == caution
        i = next(i for i, ln in enumerate(lines) if "P(covid)=" in ln)
        assert lines[i + 1].strip() == caution, lines
        assert lines[i + 2].strip() == rows[0]["track_record"], lines   # not in outputs/models/: says so
        assert rows[0]["track_record"].startswith("Track record: not found")
        assert captions[-1].endswith(f"{caution}\n{rows[0]['track_record']}") and "P(covid)=" in captions[-1]
        with Image.open(rows[0]["overlay"]) as im:
            assert im.text["Caution"] == caution
    df = P.predict_images(tiny_models["unknown"], None, [xray], out_dir=tmp_path, echo=None)
    assert "unknown" in df.loc[0, "caution"]


def test_long_caption_lines_are_wrapped_to_the_image_width():
    lines = O.wrap_caption("TITLE\n" + "word " * 30, len, 20)
    assert lines[0] == "TITLE" and len(lines) > 3 and all(len(ln) <= 20 for ln in lines)
    assert " ".join(lines[1:]).split() == ["word"] * 30  # nothing lost


def test_overlay_of_a_small_image_is_wide_enough_for_its_caption():
    caution = S.confound_warning({"normals": "all"})
    small = O.overlay_image(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.float32), "TITLE\n" + caution)
    assert small.width == O.MIN_OVERLAY_WIDTH and small.height > O.MIN_OVERLAY_WIDTH  # image + a caption strip
    big = O.overlay_image(np.zeros((3000, 2000), np.uint8), np.zeros((8, 8), np.float32), "TITLE\n" + caution)
    assert big.width == round(2000 * O.MAX_OVERLAY_SIDE / 3000)  # still capped for large images


@pytest.mark.slow
def test_upload_widget_shows_the_caution_next_to_the_score(tiny_models, xray, tmp_path, capsys):
    import ipywidgets as W
    box = PN.upload_widget(tiny_models["all"], tmp_path)
    note, upload, shown = box.children
    assert "mostly pediatric normals" in note.value
    upload.value = ({"name": xray.name, "type": "image/png", "size": xray.stat().st_size,
                     "content": memoryview(xray.read_bytes()),
                     "last_modified": datetime.now(timezone.utc)},)
    html = _displayed(capsys.readouterr().out)
    assert any("P(covid)=" in h and "mostly pediatric normals" in h for h in html), html
    assert isinstance(shown, W.Output) and (tmp_path / f"{xray.stem}_gradcam.png").is_file()


def _displayed(stdout: str) -> list[str]:
    """Outside a kernel, ``display(widget)`` prints the widget's repr; keep those of HTML widgets."""
    return [ln for ln in stdout.splitlines() if "HTML(" in ln]


def test_result_html_puts_score_label_and_caution_together():
    row = {"file": "/x/a.png", "status": "ok", "probabilities": {"normal": 0.16, "covid": 0.84}, "predicted": "covid",
           "caution": S.confound_warning({"normals": "all"}), "message": ""}
    h = PN.result_html(row, ["normal", "covid"])
    assert "P(covid)=0.840" in h and "<b>covid</b>" in h and "mostly pediatric normals" in h and "not a diagnosis" in h
    bad = PN.result_html({**row, "status": "unreadable", "message": "a.png: not scored: <zero bytes>"}, ["normal", "covid"])
    assert "&lt;zero bytes&gt;" in bad
