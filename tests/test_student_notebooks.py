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


# =========================================================================== round three (issue 19)

def _group_rows(rows: list[tuple]) -> pd.DataFrame:
    """(model, attribute, group, n_normal, n_covid, n_pediatric, status, auc, lo, hi) -> a groups table as
    ``subgroups.groups_for_models`` writes it (counts the same for every model of a group)."""
    return pd.DataFrame([{"model": m, "attribute": a, "group": g, "n_images": nn + nc, "n_patients": nn + nc,
                          "n_normal": nn, "n_covid": nc, "n_pediatric": ped, "status": st, "roc_auc": auc,
                          "roc_auc_lo": lo, "roc_auc_hi": hi}
                         for m, a, g, nn, nc, ped, st, auc, lo, hi in rows])


def _confounded(models=("a", "b"), flat: bool = True) -> pd.DataFrame:
    """AP and sex=unknown hold the pediatric normals and separate perfectly; PA and F do not; M is covid only."""
    rows = []
    for m in models:
        rows += [(m, "view", "AP", 95, 17, 95, "ok", 0.99, 0.97, 1.0), (m, "view", "PA", 5, 31, 0, "ok", 0.54, 0.23, 1.0),
                 (m, "sex", "F", 3, 21, 0, "ok", 0.51, 0.19, 0.95),
                 (m, "sex", "M", 0, 43, 0, "too few (one class only)", None, None, None),
                 (m, "sex", "unknown", 97, 8, 97, "ok", 0.98, 0.96, 1.0)]
    if flat:  # a constant-score model: AUC 0.5 everywhere, left out of every range
        rows += [("flat", a, g, nn, nc, ped, "ok" if nn and nc else "too few (one class only)",
                  0.5 if nn and nc else None, 0.5 if nn and nc else None, 0.5 if nn and nc else None)
                 for _, a, g, nn, nc, ped, *_ in rows[:5]]
    return _group_rows(rows)


def test_groups_sentence_says_where_the_models_stop_separating_the_classes():
    from cxrbook.audit import text as AR
    text = AR.groups_sentence(_confounded(), {"flat": "constant scores (spread 0.0e+00)"})
    assert "for 2 models:" in text
    assert "view=AP (112 images: 95 normal, 17 covid, 95 pediatric): both models separate the classes (AUC 0.99" in text
    assert "view=PA (36 images: 5 normal, 31 covid, none pediatric): no model is shown to separate them (AUC 0.54;" in text
    assert "sex=unknown (105 images: 97 normal, 8 covid, 97 pediatric): both models separate" in text
    assert ("Every model separates the classes in the groups holding pediatric images (view=AP, sex=unknown), but in "
            "view=PA, sex=F, without pediatric images, not every model is shown to") in text
    assert "sex=M (43 images: 0 normal, 43 covid, none pediatric): covid only" in text
    assert "flat (constant scores (spread 0.0e+00))" in text and "0.50" not in text   # out of every range


def test_groups_sentence_every_other_branch():
    from cxrbook.audit import text as AR
    # separation holds without pediatric images too
    t = _group_rows([(m, "view", g, 10, 10, ped, "ok", 0.9, 0.7, 1.0) for m in ("a", "b") for g, ped in (("AP", 5), ("PA", 0))])
    text = AR.groups_sentence(t)
    assert "In view=PA, without pediatric images, every model still separates the classes" in text
    assert "not every model" not in text and "too few" not in text
    # separation holds in one group without pediatric images and not in another: neither conclusion is drawn
    t = _group_rows([(m, "view", g, 10, 10, ped, "ok", 0.9, lo, 1.0) for m in ("a", "b")
                     for g, ped, lo in (("AP", 5, 0.7), ("PA", 0, 0.7), ("L", 0, 0.3))])
    text = AR.groups_sentence(t)
    assert "every model still separates" not in text and "not every model is shown to" not in text
    assert "view=L (20 images: 10 normal, 10 covid, none pediatric): no model is shown to separate them" in text
    # only groups with pediatric images hold both classes
    t = _group_rows([("a", "view", "AP", 10, 10, 4, "ok", 0.9, 0.7, 1.0),
                     ("a", "view", "PA", 0, 9, 0, "too few (one class only)", None, None, None)])
    text = AR.groups_sentence(t)
    assert "view=AP (20 images: 10 normal, 10 covid, 4 pediatric): the model separates the classes (AUC 0.90, its" in text
    assert "no group here tests the models on adults alone" in text and "view=PA (9 images: 0 normal, 9 covid" in text
    # one model whose interval covers 0.5: it is not shown to separate them (the sentence once said it was)
    t = _group_rows([("a", "view", "PA", 10, 10, 0, "ok", 0.77, 0.45, 0.95)])
    assert "view=PA (20 images: 10 normal, 10 covid, none pediatric): the model is not shown to separate them " \
           "(AUC 0.77; its 95% interval includes 0.5 or is missing)" in AR.groups_sentence(t)
    # intervals above, below and across 0.5 in one group: counted, and no conclusion is drawn
    t = _group_rows([("a", "view", "PA", 10, 10, 0, "ok", 0.9, 0.6, 1.0), ("b", "view", "PA", 10, 10, 0, "ok", 0.2, 0.1, 0.4),
                     ("c", "view", "PA", 10, 10, 0, "ok", 0.5, None, None)])
    text = AR.groups_sentence(t)
    assert "AUC 0.20-0.90; of 3 models' 95% intervals, 1 lie above 0.5, 1 below 0.5 and 1 include it or are missing" in text
    assert "every model still" not in text and "not every model" not in text
    # without pediatric counts no claim about pediatric images is made
    t = _confounded(flat=False).drop(columns=["n_pediatric"])
    text = AR.groups_sentence(t)
    assert "pediatric" not in text.split("Reported as")[0] and "view=PA (36 images: 5 normal, 31 covid):" in text
    # nothing to report
    assert "No model with a scores file" in AR.groups_sentence(pd.DataFrame())
    assert "Every model with a scores file was left out" in AR.groups_sentence(_confounded(("a",), flat=False), {"a": "x"})
    t = _group_rows([("a", "view", "PA", 0, 9, 0, "too few (one class only)", None, None, None)])
    assert AR.groups_sentence(t).startswith("No view or sex group holds both classes")


def test_probe_within_label_sentence_compares_each_label_with_its_own_bar():
    from cxrbook.audit import text as AR
    probe = {"accuracy_within_label": {
        "covid": {"accuracy": 0.9166, "chance": 0.9583, "n": 72, "sources": ["actualmed", "cohen"]},
        "normal": {"accuracy": 0.99, "chance": 0.94, "n": 100, "sources": ["actualmed", "cohen", "pediatric"]},
        "other": {"accuracy": 0.5, "chance": 0.5, "n": 4, "sources": ["a", "b"]},
        "solo": {"accuracy": 1.0, "chance": 1.0, "n": 3, "sources": ["cohen"]}}}
    text = AR.probe_within_label_sentence(probe)
    assert ("on the 72 covid test images (actualmed, cohen) accuracy 0.917 is below 0.958, the share of their most "
            "common source: inside this label it does no better than always naming the most common source") in text
    assert "accuracy 0.990 is above 0.940, the share of their most common source: it tells the collections apart" in text
    assert "accuracy 0.500 is equal to 0.500" in text
    assert "the 3 solo test images all come from cohen (nothing to tell apart" in text


def test_claims_are_rendered_in_full_with_the_shared_note_once():
    from cxrbook.evaluation import comparison as C
    rec = {"model": "m", "metrics": {m: {"value": 0.9, "ci95": [0.8, 1.0]} for m in
                                     ("accuracy", "sensitivity", "specificity")}}
    claims = C.claims_table([rec], "m", "chosen on validation AUC", {"flat": "constant scores", "ens": "optimistic"})
    md = C.claims_markdown(claims)
    for c in C.PUBLISHED_CLAIMS:
        assert c["inflated_by"] in md   # every cell in full, nothing cut at 50 characters
    assert md.count("flat left out: constant scores; ens left out: optimistic") == 1
    assert "| note |" not in md and len([ln for ln in md.splitlines() if ln.startswith("| ")]) == 1 + len(C.PUBLISHED_CLAIMS)
    assert "Note:" not in C.claims_markdown(C.claims_table([rec], "m", "declared in advance", {}))


def test_weights_default_reads_the_environment(monkeypatch, capsys):
    from cxrbook.workflow.notebook import WEIGHTS_ENV, weights_choice
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert weights_choice("") == "imagenet"
    monkeypatch.setenv(WEIGHTS_ENV, "none")
    assert weights_choice("") == "none" and "$CXR_WEIGHTS" in capsys.readouterr().out
    assert weights_choice("/w.h5") == "/w.h5"   # papermill's -p weights=... still wins
    for nb in ("05_vgg16_transfer_learning.ipynb", "06_model_comparison.ipynb"):
        params = _tagged("parameters", notebooks_dir() / nb)[0]
        assert 'weights = ""' in _source(params), nb
        assert any("weights_choice(weights)" in _source(c) for c in _cells(notebooks_dir() / nb)), nb


def test_make_lab_passes_weights_to_jupyter():
    import shutil
    import subprocess
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = notebooks_dir().parent
    r = subprocess.run(["make", "-n", "lab", "WEIGHTS=none"], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("CXR_WEIGHTS=none ") and "jupyter lab" in ln for ln in r.stdout.splitlines()), r.stdout


def test_offline_error_shows_as_one_line_in_ipython(capsys):
    """IPython (JupyterLab, papermill) renders ``WeightsUnavailable`` as its message, not the urllib chain."""
    from IPython.core.interactiveshell import InteractiveShell

    from cxrbook.models.backbones import WeightsUnavailable
    shell = InteractiveShell.instance()
    shell.user_ns["WeightsUnavailable"] = WeightsUnavailable
    capsys.readouterr()
    result = shell.run_cell("try:\n    raise OSError('urlopen error deep in urllib')\nexcept OSError as e:\n"
                            "    raise WeightsUnavailable(\"no internet / cannot download ImageNet weights; pass weights='none'\") from e")
    out = capsys.readouterr()
    text = out.out + out.err
    assert isinstance(result.error_in_exec, WeightsUnavailable)
    assert "WeightsUnavailable" in text and "pass weights='none'" in text
    assert "urllib" not in text and "Traceback" not in text and len(text.strip().splitlines()) == 1, text


def test_a_task_mismatch_offers_both_fixes(tmp_path):
    from cxrbook.evaluation import experiment as E
    paths = Paths(data=tmp_path, outputs=tmp_path)
    splits = pd.DataFrame({"image_path": ["a", "b", "c"], "label": ["covid", "other_pneumonia", "normal"]})
    with pytest.raises(ValueError) as e:
        E.load_task_data(paths, "covid_vs_normal", 32, splits=splits)
    msg = str(e.value)
    assert "holds the classes ['covid', 'normal', 'other_pneumonia'] (notebook 03 ran with task='three_class')" in msg
    assert "set task='three_class' in this notebook's parameters" in msg and "rerun notebook 03 with task='covid_vs_normal'" in msg
    with pytest.raises(ValueError, match="task='three_class' needs"):   # too few classes is a mismatch too
        E.load_task_data(paths, "three_class", 32, splits=splits[splits["label"] != "other_pneumonia"])


def test_missing_files_are_explained_in_the_cleaning_log(fake_data):
    from cxrbook.data import cleaning, metadata
    _, log = cleaning.clean(metadata.load_all(fake_data))
    missing = log[log["reason"] == "missing_file"]
    assert len(missing) and (missing["detail"].str.len() > 0).all()
    assert (log["detail"].fillna("").str.len() > 0).all(), log[log["detail"].fillna("") == ""]


def test_notebooks_04_order_and_take_aways():
    """04 shows test figures under the heading that announces them; 01-06 each end with take-aways."""
    cells = _cells(notebooks_dir() / "04_custom_cnn.ipynb")
    heading = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "evaluate on the patient-level"
                   in _source(c).lower())
    training = next(i for i, c in enumerate(cells) if "E.train_and_evaluate(name, model" in _source(c))
    assert heading < training
    assert not any("8,777,089" in _source(c) and "150" not in _source(c) for c in cells if c["cell_type"] == "markdown")
    for nb in sorted(notebooks_dir().glob("0[1-6]_*.ipynb")):
        last = _cells(nb)[-1]
        assert last["cell_type"] == "markdown" and _source(last).startswith("## Take-aways"), nb.name


def test_result_html_carries_the_track_record():
    row = {"file": "/x/a.png", "status": "ok", "probabilities": {"normal": 0.16, "covid": 0.84}, "predicted": "covid",
           "caution": S.confound_warning({"normals": "all"}), "message": "", "track_record": "Track record: <x> 91%"}
    h = PN.result_html(row, ["normal", "covid"])
    assert "Track record: &lt;x&gt; 91%" in h and h.index("mostly pediatric") < h.index("Track record")


@pytest.mark.slow
def test_every_score_carries_the_models_track_record(tiny_models, xray, tmp_path, monkeypatch):
    """A model in a workbook's outputs/models/: predict's lines, the overlay caption and the widget say what its
    internal test and notebook 08 measured (the web app's sentence), beside the caution."""
    import shutil

    import ipywidgets as W

    from cxrbook.inference.track_record import track_record
    out = tmp_path / "outputs"
    (out / "models").mkdir(parents=True)
    (out / "metrics").mkdir()
    for suffix in (".keras", ".json"):
        shutil.copy(tiny_models["all"].with_suffix(suffix), out / "models" / f"cnn{suffix}")
    m = {"value": 0.9, "ci95": [0.8, 0.97]}
    (out / "metrics" / "cnn.json").write_text(json.dumps({
        "model": "cnn", "classes": ["normal", "covid"], "threshold": 0.5, "n_test": 20, "n_patients": 18,
        "confusion_matrix": [[9, 1], [1, 9]], "metrics": {"sensitivity": m, "specificity": m}}))
    (out / "external.json").write_text(json.dumps({
        "collections": {"hannover": {"n_images": 243, "n_patients": 71}, "nih": {"n_images": 500, "n_patients": 200,
                                                                                   "image_side_px": 64}},
        "models": [{"model": "cnn", "threshold": 0.5, "external": {"sensitivity": {"value": 0.97, "ci95": [0.93, 0.99]},
                                                                   "specificity": {"value": 0.09, "ci95": [0.06, 0.12]}}}]}))
    expected = track_record(out, "cnn", ["normal", "covid"], 0.5, SIZE).sentence
    assert "called 91% COVID-19" in expected   # 1 - specificity 0.09 on NIH adult normals
    lines: list[str] = []
    rows = P.predict_files(load_model(out / "models" / "cnn.keras"), [xray], out_dir=tmp_path / "o", echo=lines.append)
    i = next(i for i, ln in enumerate(lines) if "P(covid)=" in ln)
    assert lines[i + 2].strip() == expected == rows[0]["track_record"]
    with Image.open(rows[0]["overlay"]) as im:
        assert im.text["TrackRecord"] == expected
    displayed: list = []   # what the widget displays, whole (a widget's repr cuts long values)
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: displayed.extend(objs))
    box = PN.upload_widget(out / "models" / "cnn.keras", tmp_path / "w")
    note, upload, shown = box.children
    upload.value = ({"name": xray.name, "type": "image/png", "size": xray.stat().st_size,
                     "content": memoryview(xray.read_bytes()), "last_modified": datetime.now(timezone.utc)},)
    html = [d.value for d in displayed if isinstance(d, W.HTML)]
    assert len(html) == 1 and "mostly pediatric normals" in html[0] and "called 91% COVID-19" in html[0], html
    assert html[0].index("P(covid)=") < html[0].index("caution") < html[0].index("Track record")
    assert isinstance(shown, W.Output)


def test_models_load_for_inference_without_optimizer_warnings(tmp_path):
    """08 printed four red 'Skipping variable loading for optimizer' warnings: a model saved with an
    optimizer that never trained (the composed transfer models) restores it at load; inference needs none."""
    import warnings

    import keras

    from cxrbook.inference.saved_model import load_keras_model
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        keras.saving.load_model(tmp_path / "m.keras")   # what 08 did: the check below can see the warning
    assert any("Skipping variable loading for optimizer" in str(w.message) for w in seen)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_keras_model(tmp_path / "m.keras")
    assert not [str(w.message) for w in seen if "optimizer" in str(w.message)]


def test_calibration_range_leaves_out_constant_models():
    from cxrbook.audit import text as AR

    def model(ece):
        return {"ece": {"value": ece, "ci95": [ece, ece]}}
    cal = {"models": {"a": model(0.05), "b": model(0.2), "flat": model(0.45)}}
    text = AR.calibration_sentence(cal, {"flat": "constant scores"})
    assert "from 0.050 (a) to 0.200 (b)" in text and "Left out of this range, as in notebook 06: flat (constant scores)" in text
    assert "0.450 (flat)" in AR.calibration_sentence(cal)   # nothing left out: the range is every model's
    assert AR.calibration_sentence({"models": {"flat": model(0.45)}}, {"flat": "x"}).startswith("No model with an")
