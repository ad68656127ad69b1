"""``python -m cxrbook predict|evaluate``: score X-ray files with a saved model.

RESEARCH TOOL, NOT A DIAGNOSIS: every printed line, CSV row, JSON and overlay
image says so. The models were trained on a few hundred public images whose
labels are confounded with the hospital they came from (see notebook 07).

Preprocessing follows the model's sidecar (``<model>.json``) exactly as the
training pipeline did: ``images.load_gray`` (grayscale, RGBA flattened on
black, 16-bit rescaled by its own range), optional CLAHE at full resolution,
bilinear resize to ``image_size``, gray copied to three channels, values 0-255.

Speed: importing TensorFlow takes longer than the whole answer should. Models
that are one chain of plain layers (Conv2D, pooling, BatchNorm, Dense, the
ImageNet preprocessing layer, nested chain-shaped models) are therefore run by
a small NumPy re-implementation of their inference and Grad-CAM that reads the
``.keras`` file directly (``engine="numpy"``). A model with branches (residual
additions, concatenations) or other layers (depthwise convolutions, ReLU6)
raises ``UnsupportedModel`` there and is loaded with Keras instead
(``engine="auto"``, the default); ``--engine`` forces one or the other.

Engine coverage of the models the notebooks save (tests/test_predict_engines.py
checks both scores against Keras and this list):

  NumPy: custom CNN, improved CNN (notebook 04), VGG16 transfer model (05, 06).
  Keras: DenseNet121, ResNet50V2, InceptionV3, MobileNetV2 transfer models (06).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .images import UnreadableImage, load_gray, prepare
from .sidecar import SidecarError, confound_warning, read_sidecar  # noqa: F401  (SidecarError, read_sidecar re-exported)

DISCLAIMER = "research tool, not a diagnosis"
OVERLAY_SUFFIX = "_gradcam.png"
ENGINES = ("auto", "numpy", "keras")

# Exit codes of ``predict`` and ``evaluate`` (also in their --help epilog and the README).
EXIT_OK = 0              # every input was scored
EXIT_NONE_SCORED = 1     # no input could be scored
EXIT_FATAL = 2           # usage error or an unusable model / folder / labels file: nothing was done
EXIT_SOME_FAILED = 3     # some inputs were scored, others failed (each one is named in the output)
EXIT_CODES_HELP = (f"exit codes: {EXIT_OK} every input scored; {EXIT_NONE_SCORED} no input could be scored; "
                   f"{EXIT_FATAL} usage error or unusable model/folder/labels (nothing scored); "
                   f"{EXIT_SOME_FAILED} some inputs scored, others failed (unreadable, DICOM, too large, "
                   "a folder, or a labelled file not found; each is named in the output)")


# =========================================================================== NumPy inference engine

class UnsupportedModel(ValueError):
    """The saved model holds a layer or a topology the NumPy engine does not implement."""


_AUGMENTATION = {"ReferenceAugmentation",
                 "RandomFlip", "RandomRotation", "RandomShear", "RandomZoom", "RandomTranslation",
                 "RandomContrast", "RandomBrightness", "RandomCrop"}
_IDENTITY = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "InputLayer"}


def _act_forward(name: str, z: np.ndarray) -> np.ndarray:
    if name in ("linear", None):
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise UnsupportedModel(f"activation {name!r}")


def _act_backward(name: str, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. the pre-activation, given the activation output ``y`` and d/dy = ``g``."""
    if name in ("linear", None):
        return g
    if name == "relu":
        return g * (y > 0)
    if name == "sigmoid":
        return g * y * (1 - y)
    if name == "tanh":
        return g * (1 - y * y)
    if name == "softmax":
        return y * (g - (g * y).sum(axis=-1, keepdims=True))
    raise UnsupportedModel(f"activation {name!r}")


def _activation_name(cfg: dict) -> str:
    a = cfg.get("activation", "linear")
    if not isinstance(a, str):
        raise UnsupportedModel(f"activation {a!r}")
    _act_forward(a, np.zeros(1, np.float32))  # validates the name
    return a


def _pad_same(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, value: float = 0.0) -> np.ndarray:
    h, w = x.shape[1:3]
    ph = max((math.ceil(h / sh) - 1) * sh + kh - h, 0)
    pw = max((math.ceil(w / sw) - 1) * sw + kw - w, 0)
    return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=value)


class _Op:
    """One inference step; ``backward`` is needed only for steps after the Grad-CAM layer."""

    is_conv = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        raise UnsupportedModel(f"{type(self).__name__} after the last convolution")


class _Identity(_Op):
    def forward(self, x):
        return x

    def backward(self, x, y, g):
        return g


class _Affine(_Op):
    """x * scale + offset per channel (Rescaling, BatchNormalization at inference, ImageNet preprocessing)."""

    def __init__(self, scale, offset, flip_channels: bool = False):
        self.scale = np.asarray(scale, np.float32)
        self.offset = np.asarray(offset, np.float32)
        self.flip = flip_channels

    def forward(self, x):
        if self.flip:
            x = x[..., ::-1]
        return x * self.scale + self.offset

    def backward(self, x, y, g):
        g = g * self.scale
        return g[..., ::-1] if self.flip else g


class _Activation(_Op):
    def __init__(self, name: str):
        self.name = name

    def forward(self, x):
        return _act_forward(self.name, x)

    def backward(self, x, y, g):
        return _act_backward(self.name, y, g)


class _Conv2D(_Op):
    is_conv = True

    def __init__(self, kernel, bias, strides, padding, activation):
        self.k, self.b = np.asarray(kernel, np.float32), None if bias is None else np.asarray(bias, np.float32)
        self.strides, self.padding, self.activation = tuple(strides), padding, activation

    def forward(self, x):
        kh, kw, c, f = self.k.shape
        sh, sw = self.strides
        if self.padding == "same":
            x = _pad_same(x, kh, kw, sh, sw)
        n, h, w = x.shape[:3]
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        out = np.zeros((n, oh, ow, f), np.float32)
        # One matmul per kernel offset: shifted input (n, oh, ow, c) @ kernel[i, j] (c, f).
        for i in range(kh):
            for j in range(kw):
                out += x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :] @ self.k[i, j]
        if self.b is not None:
            out += self.b
        return _act_forward(self.activation, out)


class _MaxPool(_Op):
    def __init__(self, pool, strides, padding):
        self.pool, self.strides, self.padding = tuple(pool), tuple(strides or pool), padding

    def _windows(self, x):
        (ph, pw), (sh, sw) = self.pool, self.strides
        if self.padding == "same":
            x = _pad_same(x, ph, pw, sh, sw, value=-np.inf)
        return x, np.lib.stride_tricks.sliding_window_view(x, (ph, pw), axis=(1, 2))[:, ::sh, ::sw]

    def forward(self, x):
        (ph, pw), (sh, sw) = self.pool, self.strides
        if self.padding == "valid" and (ph, pw) == (sh, sw):  # common case: reshape, no window copies
            n, h, w, c = x.shape
            oh, ow = h // ph, w // pw
            return x[:, :oh * ph, :ow * pw].reshape(n, oh, ph, ow, pw, c).max(axis=(2, 4))
        return self._windows(x)[1].max(axis=(-2, -1))

    def backward(self, x, y, g):
        (ph, pw), (sh, sw) = self.pool, self.strides
        xp, win = self._windows(x)
        n, oh, ow, c = win.shape[:4]
        arg = win.reshape(n, oh, ow, c, ph * pw).argmax(axis=-1)
        ii, hh, ww, cc = np.meshgrid(np.arange(n), np.arange(oh), np.arange(ow), np.arange(c), indexing="ij")
        gx = np.zeros(xp.shape, np.float32)
        np.add.at(gx, (ii, hh * sh + arg // pw, ww * sw + arg % pw, cc), g)
        if self.padding == "same":
            top = (xp.shape[1] - x.shape[1]) // 2
            left = (xp.shape[2] - x.shape[2]) // 2
            gx = gx[:, top:top + x.shape[1], left:left + x.shape[2]]
        return gx


class _GAP(_Op):
    def forward(self, x):
        return x.mean(axis=(1, 2))

    def backward(self, x, y, g):
        h, w = x.shape[1:3]
        return np.broadcast_to(g[:, None, None, :] / (h * w), x.shape).astype(np.float32)


class _Flatten(_Op):
    def forward(self, x):
        return x.reshape(len(x), -1)

    def backward(self, x, y, g):
        return g.reshape(x.shape)


class _Dense(_Op):
    def __init__(self, kernel, bias, activation):
        self.k, self.b = np.asarray(kernel, np.float32), None if bias is None else np.asarray(bias, np.float32)
        self.activation = activation

    def forward(self, x):
        z = x @ self.k
        if self.b is not None:
            z = z + self.b
        return _act_forward(self.activation, z)

    def backward(self, x, y, g):
        return _act_backward(self.activation, y, g) @ self.k.T


_IMAGENET = {  # ImagenetPreprocess modes as (flip RGB->BGR, scale, offset), see models.ImagenetPreprocess
    "tf": (False, 1 / 127.5, -1.0),
    "torch": (False, 1 / (255.0 * np.array([0.229, 0.224, 0.225])),
              -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])),
    "caffe": (True, 1.0, -np.array([103.939, 116.779, 123.68])),
}


def _dtype_ok(cfg: dict) -> None:
    d = cfg.get("dtype")
    name = d.get("config", {}).get("name") if isinstance(d, dict) else d
    if name not in (None, "float32"):
        raise UnsupportedModel(f"dtype policy {name!r}")


class _Weights:
    """Layer-name -> variable list lookup in a Keras 3 ``model.weights.h5``."""

    def __init__(self, group):
        self.group = group

    def child_model(self, name: str) -> "_Weights":
        for key in self.group.get("layers", {}):
            sub = self.group["layers"][key]
            if "vars" in sub and sub["vars"].attrs.get("name") == name:
                return _Weights(sub)
        raise UnsupportedModel(f"no weights group for nested model {name!r}")

    def vars(self, name: str) -> list[np.ndarray]:
        layers = self.group.get("layers", {})
        found = [layers[k] for k in layers if "vars" in layers[k] and layers[k]["vars"].attrs.get("name") == name]
        if len(found) != 1:
            raise UnsupportedModel(f"{len(found)} weight groups named {name!r}")
        v = found[0]["vars"]
        return [np.asarray(v[str(i)]) for i in range(len(v))]


def _chain(cfg: dict) -> list[dict]:
    """Layers of a Sequential, or of a Functional model that is a simple chain, in order."""
    kind, c = cfg["class_name"], cfg["config"]
    layers = list(c["layers"])
    if kind == "Sequential":
        return layers
    if kind not in ("Functional", "Model"):
        raise UnsupportedModel(f"model class {kind!r}")
    prev = None
    for layer in layers:
        nodes = layer.get("inbound_nodes") or []
        if layer["class_name"] == "InputLayer":
            if prev is not None:
                raise UnsupportedModel("several inputs")
        else:
            args = nodes[0].get("args", []) if len(nodes) == 1 and isinstance(nodes[0], dict) else []
            if len(args) != 1 or not isinstance(args[0], dict):
                raise UnsupportedModel(f"layer {layer['config']['name']!r} is not part of a single chain")
            hist = args[0].get("config", {}).get("keras_history", [None])
            if hist[0] != prev:
                raise UnsupportedModel(f"layer {layer['config']['name']!r} does not follow {prev!r}")
        prev = layer["config"]["name"]
    out = c.get("output_layers")
    if out and (out[0] if isinstance(out[0], str) else out[0][0]) != prev:
        raise UnsupportedModel("the output is not the last layer")
    return layers


def _build_ops(cfg: dict, weights: _Weights) -> list[_Op]:
    ops: list[_Op] = []
    for layer in _chain(cfg):
        kind, c = layer["class_name"], layer["config"]
        _dtype_ok(c)
        name = c.get("name")
        if kind in ("Sequential", "Functional", "Model"):
            inner = _chain(layer)
            if all(sub["class_name"] in _AUGMENTATION | {"InputLayer"} for sub in inner):
                ops.append(_Identity())  # augmentation acts only during training
            else:
                ops.extend(_build_ops(layer, weights.child_model(name)))
        elif kind in _IDENTITY or kind in _AUGMENTATION:
            ops.append(_Identity())
        elif kind == "Rescaling":
            ops.append(_Affine(c.get("scale", 1.0), c.get("offset", 0.0)))
        elif kind == "ImagenetPreprocess" or layer.get("registered_name") == "cxrbook>ImagenetPreprocess":
            flip, scale, offset = _IMAGENET[c["mode"]]
            ops.append(_Affine(scale, offset, flip_channels=flip))
        elif kind == "Conv2D":
            if (c.get("data_format", "channels_last") != "channels_last"
                    or tuple(c.get("dilation_rate", (1, 1))) != (1, 1) or c.get("groups", 1) != 1):
                raise UnsupportedModel(f"Conv2D {name!r} options")
            v = weights.vars(name)
            ops.append(_Conv2D(v[0], v[1] if c.get("use_bias", True) else None, c.get("strides", (1, 1)),
                               c.get("padding", "valid"), _activation_name(c)))
        elif kind == "MaxPooling2D":
            if c.get("data_format", "channels_last") != "channels_last":
                raise UnsupportedModel("channels_first pooling")
            ops.append(_MaxPool(c["pool_size"], c.get("strides"), c.get("padding", "valid")))
        elif kind == "GlobalAveragePooling2D":
            if c.get("keepdims") or c.get("data_format", "channels_last") != "channels_last":
                raise UnsupportedModel("GlobalAveragePooling2D options")
            ops.append(_GAP())
        elif kind == "Flatten":
            ops.append(_Flatten())
        elif kind == "Activation":
            ops.append(_Activation(_activation_name(c)))
        elif kind == "ReLU" and not c.get("max_value") and not c.get("negative_slope") and not c.get("threshold"):
            ops.append(_Activation("relu"))
        elif kind == "BatchNormalization":
            if c.get("axis", -1) not in (-1, 3, [-1], [3]) or c.get("renorm"):
                raise UnsupportedModel("BatchNormalization options")
            v = weights.vars(name)
            i = 0
            gamma = v[i] if c.get("scale", True) else 1.0
            i += bool(c.get("scale", True))
            beta = v[i] if c.get("center", True) else 0.0
            i += bool(c.get("center", True))
            mean, var = v[i], v[i + 1]
            inv = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + c.get("epsilon", 1e-3))
            ops.append(_Affine(inv, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * inv))
        elif kind == "Dense":
            v = weights.vars(name)
            ops.append(_Dense(v[0], v[1] if c.get("use_bias", True) else None, _activation_name(c)))
        else:
            raise UnsupportedModel(f"layer type {kind!r} ({name!r})")
    return ops


class NumpyModel:
    """Inference and Grad-CAM of a chain-shaped Keras 3 model read straight from its ``.keras`` file."""

    def __init__(self, path: str | os.PathLike):
        import h5py
        with zipfile.ZipFile(path) as z:
            cfg = json.loads(z.read("config.json"))
            data = z.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as f:
            self.ops = _build_ops(cfg, _Weights(f))
        convs = [i for i, op in enumerate(self.ops) if op.is_conv]
        if not convs:
            raise UnsupportedModel("no Conv2D layer (Grad-CAM needs one)")
        self.conv_index = convs[-1]
        for op in self.ops[self.conv_index + 1:]:  # every step after the conv must be differentiable here
            if type(op).backward is _Op.backward:
                raise UnsupportedModel(f"{type(op).__name__} after the last convolution")
        self.name = cfg["config"].get("name", "model")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Model outputs (n, k) for RGB float images (n, s, s, 3) in [0, 255]."""
        h = np.asarray(x, np.float32)
        for op in self.ops:
            h = op.forward(h)
        return h

    def gradcam(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(outputs (n, k), Grad-CAM heatmaps (n, s, s) in [0, 1]) as ``gradcam.gradcam`` computes them.

        One sigmoid: the positive score is explained; softmax: each image's predicted class.
        """
        h = np.asarray(x, np.float32)
        for op in self.ops[: self.conv_index + 1]:
            h = op.forward(h)
        maps = h
        acts = [maps]
        for op in self.ops[self.conv_index + 1:]:
            acts.append(op.forward(acts[-1]))
        out = acts[-1]
        g = np.zeros_like(out)
        if out.shape[-1] == 1:
            g[:, 0] = 1.0
        else:
            g[np.arange(len(out)), out.argmax(axis=1)] = 1.0
        for op, xin, yout in zip(reversed(self.ops[self.conv_index + 1:]), reversed(acts[:-1]), reversed(acts[1:])):
            g = op.backward(xin, yout, g)
        weights = g.mean(axis=(1, 2))
        cams = np.maximum(np.einsum("bhwc,bc->bhw", maps, weights), 0.0)
        size = x.shape[1:3]
        heat = np.zeros((len(x), *size), np.float32)
        for i, cam in enumerate(cams):
            peak = cam.max()
            cam = cam / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(cam)
            heat[i] = np.clip(_resize_float(cam, *size), 0.0, 1.0)
        return out, heat


def _resize_float(a: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR),
                      dtype=np.float32)


# =========================================================================== loading a model

@dataclass
class Scorer:
    """A loaded model, its sidecar and how it runs: ``engine`` is "numpy" or "keras"."""

    sidecar: dict
    engine: str
    name: str
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    _gradcam: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] = field(repr=False)

    @property
    def classes(self) -> list[str]:
        """Class names in output order (binary: negative, positive)."""
        return list(self.sidecar["classes"])

    @property
    def image_size(self) -> int:
        """Square input side in pixels."""
        return int(self.sidecar["image_size"])

    @property
    def threshold(self) -> float | None:
        """Stored decision threshold on P(positive) (binary), None for argmax models."""
        t = self.sidecar.get("threshold")
        if t is None and len(self.classes) == 2:
            raise ValueError("the model's sidecar JSON stores no decision threshold for this binary model; "
                             "save it with the threshold chosen on validation (notebooks 04/05 do)")
        return None if t is None else float(t)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, n_classes) class probabilities of model-ready images."""
        return to_probabilities(self._predict(x), len(self.classes))

    def probabilities_and_heatmaps(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and Grad-CAM heatmaps (n, s, s) in [0, 1]."""
        out, heat = self._gradcam(x)
        return to_probabilities(out, len(self.classes)), heat


def to_probabilities(out: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, k) probabilities from raw outputs: a single sigmoid p becomes (1 - p, p)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[1] == 1:
        if n_classes != 2:
            raise ValueError(f"one sigmoid output but {n_classes} classes in the sidecar")
        return np.concatenate([1 - out, out], axis=1)
    if out.shape[1] != n_classes:
        raise ValueError(f"model has {out.shape[1]} outputs but the sidecar lists {n_classes} classes")
    return out


def load_scorer(model_path: str | os.PathLike, engine: str = "auto") -> Scorer:
    """Load ``model_path`` (+ its sidecar). ``engine``: auto (NumPy when the model allows, else Keras),
    numpy (error if unsupported) or keras."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if Path(model_path).suffix == ".json":  # notebook 06's soft-voting ensemble: its members, each loaded as here
        from .ensemble import ensemble_scorer
        return ensemble_scorer(model_path, lambda member: load_scorer(member, engine=engine))
    sidecar = read_sidecar(model_path)
    if Path(model_path).suffix == ".keras":
        check_model_archive(model_path)
    name = Path(model_path).stem
    if len(sidecar["classes"]) == 2 and sidecar.get("threshold") is None:
        raise ValueError(f"{Path(model_path).with_suffix('.json')} stores no decision threshold for this binary "
                         "model; save it with the threshold chosen on validation (notebooks 04/05 do)")
    if Path(model_path).suffix == ".joblib":
        return pixel_scorer(model_path, sidecar)
    if engine in ("auto", "numpy"):
        try:
            net = NumpyModel(model_path)
            return Scorer(sidecar, "numpy", name, net.predict, net.gradcam)
        except (UnsupportedModel, KeyError, TypeError, AttributeError, IndexError) as e:
            if engine == "numpy":
                raise ValueError(f"the NumPy engine cannot run {model_path}: {e}; use --engine keras") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{model_path} is not a readable .keras model file ({e})") from None
    from .models import load_model
    try:
        model, _ = load_model(model_path)
    except Exception as e:  # Keras raises many types for a corrupt file
        raise ValueError(f"Keras cannot load {model_path}: {type(e).__name__}: {e}") from None
    return keras_scorer(model, sidecar, name)


def check_model_archive(model_path: str | os.PathLike) -> None:
    """ValueError naming ``model_path`` when it is not a complete ``.keras`` zip archive (e.g. truncated by an
    interrupted copy); Keras itself reports such a file as "File not found"."""
    try:
        with zipfile.ZipFile(model_path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"model file {model_path} is truncated or corrupt: it is not a complete .keras (zip) "
                         f"archive ({e}); copy it again or re-save it from its notebook") from None
    missing = sorted({"config.json", "model.weights.h5"} - names)
    if missing:
        raise ValueError(f"model file {model_path} is truncated or corrupt: its .keras archive lacks {missing}; "
                         "copy it again or re-save it from its notebook")


def pixel_scorer(model_path: str | os.PathLike, sidecar: dict) -> Scorer:
    """A classical pixel classifier saved with joblib (notebook 06's logistic regression, ``logreg_pixels``).

    It reads the same ``image_size`` square as the cache it was fitted on, shrunk to
    ``sidecar["thumbnail_size"]`` (``experiment.thumbnails``); engine "sklearn", no Grad-CAM.
    """
    import joblib

    from .experiment import pixel_logreg_scores
    try:
        clf = joblib.load(model_path)
    except Exception as e:  # joblib/pickle raise many types for a corrupt file
        raise ValueError(f"cannot load {model_path} with joblib: {type(e).__name__}: {e}") from None
    size = int(sidecar.get("thumbnail_size", 32))

    def predict(x):
        gray = np.round(np.asarray(x, np.float32)[..., :1]).astype(np.uint8)  # model input is gray x3, 0-255
        return pixel_logreg_scores(clf, gray, len(sidecar["classes"]), size)

    def cam(x):
        raise ValueError(f"{Path(model_path).name} is a pixel classifier: it has no Grad-CAM; use --no-gradcam")

    return Scorer(dict(sidecar), "sklearn", Path(model_path).stem, predict, cam)


def keras_scorer(model, sidecar: dict, name: str | None = None) -> Scorer:
    """Wrap an in-memory Keras model (e.g. in a notebook) and its sidecar dict."""
    from .gradcam import gradcam

    def predict(x):
        return np.asarray(model.predict(np.asarray(x, np.float32), batch_size=32, verbose=0))

    def cam(x):
        return predict(x), gradcam(model, np.asarray(x, np.float32))

    return Scorer(dict(sidecar), "keras", name or getattr(model, "name", "model"), predict, cam)


# =========================================================================== preprocessing and output

def preprocess_file(path: str | os.PathLike, sidecar: dict) -> tuple[np.ndarray, np.ndarray]:
    """(full-resolution gray uint8 image, model input (s, s, 3) float32 in [0, 255]).

    As in training (``images.prepare``, also used by the cache): decode with ``images.load_gray``, CLAHE
    at full resolution when ``sidecar["preprocessing"]["clahe"]``, bilinear
    resize to ``sidecar["image_size"]``, gray copied to three channels.
    Raises ``images.UnreadableImage`` (with ``.reason``) for files that cannot be used.
    """
    gray = load_gray(path)
    clahe = bool((sidecar.get("preprocessing") or {}).get("clahe"))
    small = prepare(gray, int(sidecar["image_size"]), clahe).astype(np.float32)  # same function as training
    return gray, np.repeat(small[..., None], 3, axis=-1)


def decide(probs: np.ndarray, classes: Sequence[str], threshold: float | None) -> list[str]:
    """Predicted class names: binary ``P(positive) >= threshold``, otherwise argmax."""
    probs = np.asarray(probs)
    if len(classes) == 2:
        if threshold is None:
            raise ValueError("a binary model needs its validation-chosen threshold; none was given")
        return [classes[1] if p >= float(threshold) else classes[0] for p in probs[:, 1]]
    return [classes[i] for i in probs.argmax(axis=1)]


def _jet(v: np.ndarray) -> np.ndarray:
    """matplotlib's ``jet`` colormap (its piecewise-linear definition), (..., 3) in [0, 1]."""
    v = np.clip(v, 0, 1)
    r = np.interp(v, [0, 0.35, 0.66, 0.89, 1], [0, 0, 1, 1, 0.5])
    g = np.interp(v, [0, 0.125, 0.375, 0.64, 0.91, 1], [0, 0, 1, 1, 0, 0])
    b = np.interp(v, [0, 0.11, 0.34, 0.65, 1], [0.5, 1, 1, 0, 0])
    return np.stack([r, g, b], axis=-1)


_JET_LUT = None
MAX_OVERLAY_SIDE = 1024
MIN_OVERLAY_WIDTH = 480  # narrower images are shown upscaled, so the caption (and its caution) stays legible


def overlay_image(gray: np.ndarray, heatmap: np.ndarray, caption: str, alpha: float = 0.4):
    """PIL RGB image: jet heatmap blended over the gray image, with a caption strip below.

    Images whose longer side exceeds ``MAX_OVERLAY_SIDE`` are shown downscaled, images narrower than
    ``MIN_OVERLAY_WIDTH`` upscaled (within ``MAX_OVERLAY_SIDE``); caption lines wider than the image wrap.
    """
    global _JET_LUT
    from PIL import Image, ImageDraw, ImageFont
    if _JET_LUT is None:  # 256 colours, as matplotlib samples its colormaps
        _JET_LUT = (_jet(np.linspace(0, 1, 256)) * 255.0).astype(np.float32)
    g = np.asarray(gray)
    if max(g.shape) > MAX_OVERLAY_SIDE or g.shape[1] < MIN_OVERLAY_WIDTH:
        scale = min(MAX_OVERLAY_SIDE / max(g.shape), max(1.0, MIN_OVERLAY_WIDTH / g.shape[1]))
        size = (max(1, round(g.shape[1] * scale)), max(1, round(g.shape[0] * scale)))
        g = np.asarray(Image.fromarray(g).resize(size, Image.BILINEAR))
    g = g.astype(np.float32)
    heat = _resize_float(heatmap, *g.shape) if heatmap.shape != g.shape else heatmap
    colors = _JET_LUT[np.clip((heat * 255).astype(np.int32), 0, 255)]
    blended = (1 - alpha) * g[..., None] + alpha * colors
    img = Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), "RGB")
    font_size = max(12, img.width // 40)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(img)
    lines = wrap_caption(caption, lambda t: measure.textlength(t, font=font), img.width - 8)
    strip = Image.new("RGB", (img.width, (font_size + 6) * len(lines) + 6), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * (font_size + 6)), line, fill=(255, 255, 0), font=font)
    out = Image.new("RGB", (img.width, img.height + strip.height))
    out.paste(img, (0, 0))
    out.paste(strip, (0, img.height))
    return out


def wrap_caption(caption: str, text_width: Callable[[str], float], max_width: float) -> list[str]:
    """The caption's lines (split at newlines), each wrapped at spaces so that ``text_width(line) <= max_width``
    where possible (a single word wider than that stays on its own line)."""
    out: list[str] = []
    for paragraph in caption.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and text_width(trial) > max_width:
                out.append(line)
                line = word
            else:
                line = trial
        out.append(line)
    return out


def _save_png(img, path: Path, meta: dict) -> None:
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    for k, v in meta.items():
        info.add_text(k, str(v))
    img.save(path, pnginfo=info, compress_level=1)


def _overlay_path(src: Path, out_dir: Path | None, taken: set) -> Path:
    folder = out_dir if out_dir is not None else src.parent
    p = folder / f"{src.stem}{OVERLAY_SUFFIX}"
    i = 2
    while p in taken:
        p = folder / f"{src.stem}_{i}{OVERLAY_SUFFIX}"
        i += 1
    taken.add(p)
    return p


def _format_probs(classes: Sequence[str], probs: np.ndarray) -> str:
    return "  ".join(f"P({c})={p:.3f}" for c, p in zip(classes, probs))


# =========================================================================== predict

def predict_files(scorer: Scorer, files: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                  overlays: bool = True, echo: Callable[[str], None] | None = print) -> list[dict]:
    """Score image files one by one; one dict per file (``status`` "ok" or "unreadable").

    Keys: file, status, reason, probabilities (dict), predicted, threshold,
    overlay (path or None), message, note, caution (``sidecar.confound_warning``:
    what a high score of this model may really mean; printed and captioned beside every score). With ``overlays`` a Grad-CAM
    overlay ``<stem>_gradcam.png`` is written beside each original (or in
    ``out_dir``); an unwritable folder is reported, the scores are still given.
    """
    classes, t = scorer.classes, scorer.threshold
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda s: None)
    rows, taken = [], set()
    rule = f"P({classes[1]}) >= {t:.3f}" if len(classes) == 2 else "argmax"
    caution = confound_warning(scorer.sidecar)
    for f in files:
        path = Path(f)
        row = {"file": str(path), "status": "ok", "reason": "", "probabilities": {}, "predicted": None,
               "threshold": t, "overlay": None, "message": "", "note": DISCLAIMER, "caution": caution}
        try:
            gray, x = preprocess_file(path, scorer.sidecar)
        except UnreadableImage as e:
            from .images import REASONS
            hint = ("; to score every image under a folder use `python -m cxrbook evaluate --model MODEL "
                    f"--images {path}`" if e.reason == "is_a_directory" else "")
            row.update(status="unreadable", reason=e.reason,
                       message=f"{path}: not scored: {REASONS.get(e.reason, e.reason)}"
                               + (f" ({e.detail})" if e.detail else "") + hint)
            say(row["message"])
            rows.append(row)
            continue
        if overlays:
            probs, heat = scorer.probabilities_and_heatmaps(x[None])
        else:
            probs, heat = scorer.probabilities(x[None]), None
        label = decide(probs, classes, t)[0]
        row.update(probabilities={c: float(p) for c, p in zip(classes, probs[0])}, predicted=label)
        say(f"{path}: {_format_probs(classes, probs[0])} -> {label} (rule {rule}) [{DISCLAIMER}]")
        say(f"  {caution}")
        if heat is not None:
            target = _overlay_path(path, out, taken)
            caption = (f"{DISCLAIMER.upper()}\n{scorer.name}: {_format_probs(classes, probs[0])} -> {label}"
                       f"\n{caution}")
            try:
                _save_png(overlay_image(gray, heat[0], caption), target,
                          {"Disclaimer": DISCLAIMER, "Source": str(path), "Model": scorer.name,
                           "Prediction": label, "Probabilities": json.dumps(row["probabilities"]),
                           "Caution": caution})
                row["overlay"] = str(target)
                say(f"  Grad-CAM overlay: {target}")
            except OSError as e:
                row["message"] = (f"cannot write the overlay in {target.parent} ({e.strerror or e}); "
                                  "pass --out DIR to write overlays elsewhere")
                say(f"  {row['message']}")
        rows.append(row)
    return rows


def predict_images(model, sidecar: dict | None, paths: Sequence[str | os.PathLike] | str,
                   out_dir: str | os.PathLike | None = None, overlays: bool = True, echo=print):
    """Notebook entry point: score files with a Keras model (+ sidecar) or a ``Scorer``, as a DataFrame.

    ``model`` may be a ``Scorer``, a path to a ``.keras`` file (sidecar read
    beside it) or an in-memory Keras model with its ``sidecar`` dict. One row
    per file: file, status, P(<class>) columns, predicted, threshold, overlay, message, note, caution.
    """
    import pandas as pd
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(model, Scorer):
        scorer = model
    elif isinstance(model, (str, os.PathLike)):
        scorer = load_scorer(model)
    else:
        if sidecar is None:
            raise ValueError("pass the model's sidecar dict (classes, image_size, threshold, preprocessing)")
        scorer = keras_scorer(model, sidecar)
    rows = predict_files(scorer, paths, out_dir=out_dir, overlays=overlays, echo=echo)
    flat = [{"file": r["file"], "status": r["status"], "reason": r["reason"],
             **{f"P({c})": r["probabilities"].get(c) for c in scorer.classes},
             "predicted": r["predicted"], "threshold": r["threshold"], "overlay": r["overlay"],
             "message": r["message"], "note": r["note"], "caution": r["caution"]} for r in rows]
    return pd.DataFrame(flat)


# =========================================================================== evaluate

def list_files(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Every regular, non-hidden file under ``root`` (recursive, sorted), minus ``exclude``
    (files or folders) and the overlays this tool writes (``*_gradcam.png``)."""
    root = Path(root)
    excl = [Path(e).resolve() for e in exclude]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if fn.startswith(".") or fn.endswith(OVERLAY_SUFFIX):
                continue
            rp = p.resolve()
            if any(rp == e or e in rp.parents for e in excl):
                continue
            out.append(p)
    return out


def read_labels(path: str | os.PathLike, classes: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """``filename -> (label, patient_id or None)`` from a CSV with columns filename,label[,patient_id].

    Raises ValueError naming the file for a missing file, missing columns,
    duplicate filenames or labels that are not among the model's classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"labels file {path} is not a readable CSV ({e})") from None
    missing = [c for c in ("filename", "label") if c not in cols]
    if missing:
        raise ValueError(f"labels file {path} lacks column(s) {missing}; it needs filename,label "
                         f"(optional patient_id), found {cols}")
    out: dict[str, tuple[str, str | None]] = {}
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise ValueError(f"labels file {path} has labels {unknown} that the model does not know; "
                         f"its classes are {list(classes)}")
    for r in rows:
        if not r["filename"]:
            continue
        if r["filename"] in out:
            raise ValueError(f"labels file {path} lists {r['filename']!r} twice")
        out[r["filename"]] = (r["label"], r.get("patient_id") or None)
    return out


def evaluate_folder(scorer: Scorer, images_dir: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None, n_boot: int = 1000, seed: int = 42,
                    batch_size: int = 64, echo: Callable[[str], None] | None = print) -> dict:
    """Score every file under ``images_dir``; write predictions.csv, unreadable.csv and, with labels, metrics.json.

    ``labels_csv`` rows match an image by its path relative to ``images_dir``
    (e.g. ``covid/img1.png``) or, when unambiguous, by its bare file name.
    Without a ``patient_id`` column every image counts as its own patient in
    the bootstrap intervals (too narrow if patients have several images).
    Returns a summary dict (counts, output paths, metrics record or None).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"images folder {images_dir} does not exist or is not a folder")
    say = echo or (lambda s: None)
    classes = scorer.classes
    if out_dir is None:
        from .config import DEFAULT_OUTPUT_DIR
        out_dir = DEFAULT_OUTPUT_DIR / "evaluate" / (images_dir.resolve().name or "images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = read_labels(labels_csv, classes) if labels_csv else None
    files = list_files(images_dir, exclude=[out] + ([labels_csv] if labels_csv else []))
    say(f"evaluate: {len(files)} files under {images_dir} with {scorer.name} (engine {scorer.engine}) "
        f"[{DISCLAIMER}]")
    rel = [p.relative_to(images_dir).as_posix() for p in files]
    scored: list[tuple[int, np.ndarray]] = []
    unreadable: list[dict] = []
    t0 = time.perf_counter()
    batch_x, batch_i = [], []

    def flush():
        if batch_x:
            probs = scorer.probabilities(np.stack(batch_x))
            scored.extend(zip(batch_i, probs))
            batch_x.clear()
            batch_i.clear()

    for i, p in enumerate(files):
        try:
            _, x = preprocess_file(p, scorer.sidecar)
        except UnreadableImage as e:
            unreadable.append({"file": rel[i], "reason": e.reason, "detail": e.detail, "note": DISCLAIMER})
            continue
        batch_x.append(x)
        batch_i.append(i)
        if len(batch_x) >= batch_size:
            flush()
    flush()
    seconds = time.perf_counter() - t0
    preds = {i: (p, decide(p[None], classes, scorer.threshold)[0]) for i, p in scored}
    pred_csv, bad_csv = out / "predictions.csv", out / "unreadable.csv"
    with open(pred_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", *[f"score_{c}" for c in classes], "predicted_label", "threshold", "note"])
        for i in sorted(preds):
            p, lab = preds[i]
            w.writerow([rel[i], *[f"{v:.6f}" for v in p], lab,
                        "" if scorer.threshold is None else f"{scorer.threshold:.6f}", DISCLAIMER])
    with open(bad_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "reason", "detail", "note"])
        w.writeheader()
        w.writerows(unreadable)
    say(f"scored {len(preds)} images in {seconds:.1f} s -> {pred_csv}")
    say(f"unreadable: {len(unreadable)} -> {bad_csv}" + ("" if not unreadable else " ("
        + ", ".join(f"{r}: {n}" for r, n in _count(u["reason"] for u in unreadable).items()) + ")"))
    for u in unreadable[:MAX_LISTED]:
        say(f"  not scored: {u['file']}: {u['reason']}" + (f" ({u['detail']})" if u["detail"] else ""))
    if len(unreadable) > MAX_LISTED:
        say(f"  ... and {len(unreadable) - MAX_LISTED} more in {bad_csv}")
    summary = {"n_files": len(files), "n_scored": len(preds), "n_unreadable": len(unreadable),
               "predictions_csv": str(pred_csv), "unreadable_csv": str(bad_csv), "seconds_scoring": round(seconds, 2),
               "metrics": None, "metrics_json": None, "note": DISCLAIMER}
    if labels is not None:
        summary.update(_labelled_metrics(scorer, labels, rel, preds, out, images_dir, labels_csv, n_boot, seed, say))
    return summary


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out


def _labelled_metrics(scorer, labels, rel, preds, out, images_dir, labels_csv, n_boot, seed, say) -> dict:
    from . import metrics as M
    from . import records as R
    classes = scorer.classes
    names = [Path(r).name for r in rel]
    name_count = _count(names)
    def label_key(i: int) -> str | None:
        return rel[i] if rel[i] in labels else (names[i] if name_count[names[i]] == 1 and names[i] in labels
                                                else None)

    found = {label_key(i) for i in range(len(rel))} - {None}  # labelled files present (scored or unreadable)
    not_found = sorted(set(labels) - found)
    y, s, pid, used = [], [], [], set()
    for i in sorted(preds):
        key = label_key(i)
        if key is None:
            continue
        used.add(key)
        lab, patient = labels[key]
        y.append(classes.index(lab))
        s.append(preds[i][0])
        pid.append(patient if patient is not None else f"image:{rel[i]}")
    n_unlabelled = len(preds) - len(y)
    n_orphan = len(set(labels) - used)
    if not y:
        raise ValueError(f"no scored image matches a row of {labels_csv} (filename must be the path relative to "
                         f"{images_dir} or the bare file name)")
    has_pid = any(v[1] is not None for v in labels.values())
    scores = np.asarray(s)
    scores = scores[:, 1] if len(classes) == 2 else scores
    threshold = scorer.threshold if len(classes) == 2 else None
    rule = "stored in the model sidecar"
    if len(classes) == 2 and threshold is None:
        threshold, rule = 0.5, "fixed 0.5 (the sidecar stores no threshold)"
    report = M.evaluate(np.asarray(y), scores, np.asarray(pid), classes, threshold=threshold, n_boot=n_boot, seed=seed)
    record = R.metrics_record(
        report, model=scorer.name, task=str(scorer.sidecar.get("task", "unknown")),
        weights=str(scorer.sidecar.get("weights", "unknown")),
        threshold_rule=rule if len(classes) == 2 else "argmax",
        extra={"note": DISCLAIMER, "images_dir": str(images_dir), "labels_csv": str(labels_csv),
               "patients": ("patient_id column of the labels file" if has_pid else
                            "no patient_id column: each image counts as its own patient"),
               "n_scored_without_label": n_unlabelled, "n_labels_without_scored_image": n_orphan,
               "labels_not_found": not_found, "labels_unreadable": sorted(found - used),
               "engine": scorer.engine, "image_size": scorer.image_size,
               "preprocessing": scorer.sidecar.get("preprocessing")})
    path = R.save_metrics(record, out / "metrics.json")
    auc = record["metrics"].get("roc_auc" if len(classes) == 2 else "macro_auc", {})
    say(f"metrics on {record['n_test']} labelled images ({record['n_patients']} patients): accuracy "
        f"{R.fmt(record['metrics']['accuracy'])}, AUC {R.fmt(auc)} -> {path} [{DISCLAIMER}]")
    if not has_pid:
        say("  (no patient_id column: every image is treated as its own patient)")
    if n_unlabelled or n_orphan:
        say(f"  {n_unlabelled} scored images had no label; {n_orphan} labelled files were not scored")
    if not_found:
        shown = not_found[:MAX_LISTED]
        more = f" ... and {len(not_found) - len(shown)} more" if len(not_found) > len(shown) else ""
        say(f"  {len(not_found)} labelled files were not found under {images_dir} (listed in {path} under "
            f"extra.labels_not_found): {', '.join(shown)}{more}")
    return {"metrics": record, "metrics_json": str(path), "n_labels_not_found": len(not_found)}


MAX_LISTED = 20  # console lists at most this many names; the JSON/CSV files hold them all


# =========================================================================== command line

def add_commands(subparsers) -> None:
    """Add ``predict`` and ``evaluate`` to the ``python -m cxrbook`` parser."""
    note = f"Research tool, not a diagnosis. Engines: {', '.join(ENGINES)} (auto: NumPy when possible)."
    p = subparsers.add_parser("predict", help=f"score X-ray image files ({DISCLAIMER})", description=note,
                              epilog=EXIT_CODES_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, 16-bit, RGBA, ...; not DICOM: convert it to PNG first); "
                        "for a folder use evaluate --images DIR")
    p.add_argument("--model", required=True, help="outputs/models/<name>.keras (its .json sidecar beside it)")
    p.add_argument("--out", help="folder for the Grad-CAM overlays (default: beside each image)")
    p.add_argument("--no-gradcam", action="store_true", help="print scores only, write no overlay")
    p.add_argument("--engine", choices=ENGINES, default="auto")
    p.set_defaults(func=cmd_predict)

    e = subparsers.add_parser("evaluate", help=f"score every image under a folder ({DISCLAIMER})",
                              description=note + " Without a patient_id column in --labels every image counts "
                                                 "as its own patient in the bootstrap intervals.",
                              epilog=EXIT_CODES_HELP)
    e.add_argument("--model", required=True, help="outputs/models/<name>.keras")
    e.add_argument("--images", required=True, help="folder scanned recursively")
    e.add_argument("--labels", help="CSV with columns filename,label[,patient_id]; filename relative to --images "
                                    "or a bare file name")
    e.add_argument("--out", help="output folder (default: outputs/evaluate/<folder name>)")
    e.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples for the intervals")
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--engine", choices=ENGINES, default="auto")
    e.set_defaults(func=cmd_evaluate)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _exit_code(n_scored: int, n_failed: int) -> int:
    """The documented exit code (``EXIT_CODES_HELP``) for a run that scored and failed these many inputs."""
    if not n_scored:
        return EXIT_NONE_SCORED
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def cmd_predict(args) -> int:
    """CLI ``predict``; returns an exit code of ``EXIT_CODES_HELP``."""
    t0 = time.perf_counter()
    try:
        scorer = load_scorer(args.model, engine=args.engine)
    except ValueError as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"model {args.model} ({scorer.engine} engine, {scorer.image_size} px, classes {scorer.classes}, "
          f"threshold {scorer.threshold}) loaded in {time.perf_counter() - t0:.2f} s [{DISCLAIMER}]")
    rows = predict_files(scorer, args.images, out_dir=args.out, overlays=not args.no_gradcam)
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r["file"] for r in rows if r["status"] != "ok"]
    print(f"{ok} of {len(rows)} images scored in {time.perf_counter() - t0:.2f} s"
          + (f"; not scored: {', '.join(failed)}" if failed else "") + ". "
          f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(ok, len(failed))


def cmd_evaluate(args) -> int:
    """CLI ``evaluate``; returns an exit code of ``EXIT_CODES_HELP`` (labelled files not found count as failed)."""
    try:
        scorer = load_scorer(args.model, engine=args.engine)
        summary = evaluate_folder(scorer, args.images, labels_csv=args.labels, out_dir=args.out,
                                  n_boot=args.n_bootstrap, seed=args.seed)
    except ValueError as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(summary["n_scored"], summary["n_unreadable"] + summary.get("n_labels_not_found", 0))


# =========================================================================== notebook upload widget

def upload_widget(model, out_dir: str | os.PathLike, sidecar: dict | None = None):
    """An ``ipywidgets`` file picker that scores the chosen X-ray like ``predict`` and shows its overlay.

    ``model``: a ``Scorer``, a ``.keras`` path or a Keras model (+ ``sidecar``).
    Returns the widget box; nothing runs until a file is picked, so executing
    the cell non-interactively (papermill) only displays it.
    """
    import ipywidgets as W
    from IPython.display import Image as IPImage
    from IPython.display import display

    scorer = model if isinstance(model, Scorer) else (
        load_scorer(model) if isinstance(model, (str, os.PathLike)) else keras_scorer(model, sidecar or {}))
    folder = Path(out_dir)
    up = W.FileUpload(accept="image/*,.png,.jpg,.jpeg,.tif,.tiff,.bmp", multiple=False,
                      description="Chest X-ray")
    shown = W.Output()

    def on_upload(change) -> None:
        value = change["new"]
        items = list(value.values()) if isinstance(value, dict) else list(value)  # ipywidgets 7 / 8
        with shown:
            shown.clear_output()
            for item in items:
                name = Path(item.get("name") or item.get("metadata", {}).get("name", "upload")).name
                target = folder / "uploads" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(bytes(item["content"]))
                rows = predict_files(scorer, [target], out_dir=folder, echo=None)
                display(W.HTML(result_html(rows[0], scorer.classes)))
                if rows[0]["overlay"]:
                    display(IPImage(filename=rows[0]["overlay"]))

    up.observe(on_upload, names="value")
    note = W.HTML(f"<b>{DISCLAIMER.upper()}.</b> Pick a chest X-ray file; it is scored by <code>{scorer.name}</code> "
                  f"({scorer.engine} engine) exactly as <code>python -m cxrbook predict</code> would.<br>"
                  f"<span style='color:#b00000'>{html.escape(confound_warning(scorer.sidecar))}</span>")
    return W.VBox([note, up, shown])


def result_html(row: dict, classes: Sequence[str]) -> str:
    """One scored (or unreadable) file of ``predict_files`` as HTML for the notebook: the score, the label and,
    right beside them, the disclaimer and the model's confound caution (``row["caution"]``)."""
    name = html.escape(Path(row["file"]).name)
    if row["status"] != "ok":
        return f"<p><b>{name}</b>: {html.escape(row['message'])}</p>"
    probs = html.escape(_format_probs(classes, [row["probabilities"][c] for c in classes]))
    return (f"<p><b>{name}</b>: {probs} &rarr; <b>{html.escape(str(row['predicted']))}</b> "
            f"[{DISCLAIMER}]<br><span style='color:#b00000'>&#9888; {html.escape(row['caution'])}</span></p>")


# =========================================================================== notebook 07's prediction section

DEFAULT_EXAMPLE_MODEL = "custom_cnn"  # notebook 04's reference CNN


def resolve_model(paths, model_path: str | os.PathLike = "", task: str = "covid_vs_normal") -> Path:
    """The ``.keras`` file a notebook's ``model_path`` parameter names.

    Empty: notebook 04's reference CNN for ``task`` (``outputs/models/custom_cnn.keras``; FileNotFoundError
    saying to run notebook 04 when it is missing). Otherwise the path as given (relative to the current
    folder), or, for a bare file name such as ``vgg16.keras``, that file in ``outputs/models/``.
    """
    from .experiment import model_name
    if not str(model_path).strip():
        return paths.require(paths.models / f"{model_name(DEFAULT_EXAMPLE_MODEL, task)}.keras", "04")
    p = Path(model_path).expanduser()
    if not p.exists() and not p.is_absolute() and p.parent == Path("."):
        in_models = paths.models / (p.name if p.suffix else f"{p.name}.keras")
        if in_models.exists():
            return in_models
        raise FileNotFoundError(f"model_path {str(model_path)!r}: neither {p.resolve()} nor {in_models} exists "
                                "(notebooks 04-06 save models as outputs/models/<name>.keras)")
    return p


def first_test_image(paths) -> str:
    """The first test image of ``outputs/splits.csv`` (image paths sorted, as the training arrays are)."""
    import pandas as pd
    splits = pd.read_csv(paths.require(paths.splits_csv, "03"), usecols=["image_path", "split"])
    test = sorted(splits.loc[splits["split"] == "test", "image_path"].astype(str))
    if not test:
        raise ValueError(f"{paths.splits_csv} has no test image: rerun notebook 03")
    return test[0]


def example_prediction(paths, model_path: str | os.PathLike = "", example_image: str | os.PathLike = "",
                       task: str = "covid_vs_normal", echo: Callable[[str], None] | None = print):
    """Notebook 07's prediction section in one call; it needs only the setup cell (``paths``), no audit result.

    Scores ``example_image`` (empty: ``first_test_image``) with ``resolve_model(paths, model_path, task)``
    exactly like ``python -m cxrbook predict`` and writes its Grad-CAM overlay to ``outputs/predictions/``.
    Returns ``predict_images``' one-row DataFrame (scores, label, overlay path, caution).
    """
    model = resolve_model(paths, model_path, task)
    image = str(example_image).strip() or first_test_image(paths)
    if echo:
        echo(f"model {model}; image {image}")
    return predict_images(model, None, [image], out_dir=paths.outputs / "predictions", echo=echo)
