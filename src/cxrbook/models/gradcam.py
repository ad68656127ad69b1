"""Grad-CAM heatmaps (Selvaraju et al. 2017) for the workbook's Keras models.

The heatmap of an image is ReLU(sum_c w_c A_c) with A the last convolutional
feature maps and w_c the spatially averaged gradient of the class score with
respect to A_c. Gradients are backend-specific: tf.GradientTape for the
TensorFlow backend, torch autograd for the torch backend.

In ``models.full_transfer_model`` the convolutional layers sit inside a nested
base model (image -> backbone(preprocess -> base) -> head). A conv output inside
a nested model is not reachable from the outer model's graph, so each nested
model on the way is turned into a two-output model (conv maps, own output) and
the outer layers are applied one after another. That works for chain-shaped
outer models (each layer feeding the next), which is checked numerically.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from .overlay import blend, resize_float
from ..data.pipeline import to_rgb_float

_CONV_TYPES = (keras.layers.Conv2D,)


def _walk(model: keras.Model, path: tuple = ()):
    """(layer, chain of enclosing models) for every layer, depth-first in layer order."""
    for layer in model.layers:
        yield layer, path + (model,)
        if isinstance(layer, keras.Model):
            yield from _walk(layer, path + (model,))


def find_conv_layer(model: keras.Model, layer_name: str | None = None) -> tuple[keras.layers.Layer, tuple]:
    """The named layer, or the last Conv2D anywhere in the (nested) model, with its enclosing models."""
    found = None
    for layer, path in _walk(model):
        if layer_name is not None:
            if layer.name == layer_name:
                return layer, path
        elif isinstance(layer, _CONV_TYPES):
            found = (layer, path)
    if found is None:
        what = f"a layer named {layer_name!r}" if layer_name else "a Conv2D layer"
        raise ValueError(f"model {model.name!r} has no {what}")
    return found


def _forward_fn(model: keras.Model, conv: keras.layers.Layer, path: tuple):
    """A function x -> (conv maps, model output) for ``model`` (== path[0])."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if len(path) == 1 and not isinstance(model, keras.Sequential):
        grad_model = keras.Model(model.inputs, [conv.output, model.outputs[0]])
        return lambda x: grad_model(x, training=False)
    # Sequential models (whose symbolic conv.output can be stale after reloading) and
    # nested models run layer by layer, keeping the conv layer's output.
    child = path[1] if len(path) > 1 else None
    inner = _forward_fn(child, conv, path[1:]) if child is not None else None

    def forward(x):
        h, maps = x, None
        for layer in layers:
            if layer is child:
                maps, h = inner(h)
            else:
                h = layer(h, training=False)
                if layer is conv:
                    maps = h
        return maps, h

    return forward


def _class_scores(out, class_index, n_out: int):
    """The scalar per image whose gradient Grad-CAM follows, as a backend tensor."""
    ops = keras.ops
    if n_out == 1:
        # One sigmoid: None/1 explain the positive class; 0 explains the negative (1 - p).
        if class_index in (None, 1):
            return out[:, 0]
        if class_index == 0:
            return 1.0 - out[:, 0]
        raise ValueError(f"class_index must be None, 0 or 1 for a one-sigmoid model, got {class_index}")
    probs = ops.convert_to_numpy(ops.stop_gradient(out))
    n = probs.shape[0]
    if class_index is None:
        idx = probs.argmax(axis=1)
    else:
        idx = np.broadcast_to(np.asarray(class_index), (n,))
    onehot = np.eye(n_out, dtype=np.float32)[idx]
    return ops.sum(out * ops.convert_to_tensor(onehot), axis=1)


def _grads(forward, batch: np.ndarray, class_index, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(conv maps, d score / d maps, model output) as numpy, for one batch."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        x = tf.convert_to_tensor(batch, dtype=tf.float32)
        with tf.GradientTape() as tape:
            # Watch the input: a frozen backbone has no trainable variables for the tape to follow.
            tape.watch(x)
            maps, out = forward(x)
            score = _class_scores(out, class_index, n_out)
        grads = tape.gradient(score, maps)
        return maps.numpy(), grads.numpy(), out.numpy()
    if backend == "torch":
        import torch
        x = keras.ops.convert_to_tensor(batch, dtype="float32")
        with torch.enable_grad():
            # requires_grad on the input makes the maps differentiable even with frozen weights.
            x = x.detach().requires_grad_(True)
            maps, out = forward(x)
            score = _class_scores(out, class_index, n_out)
            (grads,) = torch.autograd.grad(score.sum(), maps)
        return (maps.detach().cpu().numpy(), grads.detach().cpu().numpy(), out.detach().cpu().numpy())
    raise NotImplementedError(f"Grad-CAM gradients are implemented for the tensorflow and torch backends, "
                              f"not for {backend!r}")


def gradcam(model: keras.Model, images: np.ndarray, layer_name: str | None = None,
            class_index: int | Sequence[int] | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM heatmaps (n, H, W) in [0, 1], resized to the input size.

    ``images`` as the model takes them (RGB floats in [0, 255]); grayscale uint8
    (n, H, W[, 1]) is converted. ``layer_name`` defaults to the last Conv2D, also
    inside nested backbones. ``class_index``: for a one-sigmoid model None means
    the positive score (0 the negative); for softmax None means each image's
    predicted class. An image whose map is all zero gets an all-zero heatmap.
    """
    conv, path = find_conv_layer(model, layer_name)
    forward = _forward_fn(model, conv, path)
    x = np.asarray(images)
    if len(model.input_shape) == 4 and model.input_shape[-1] == 3 and (x.ndim == 3 or x.shape[-1] == 1):
        x = to_rgb_float(x)
    x = x.astype(np.float32)
    n, height, width = x.shape[0], x.shape[1], x.shape[2]
    n_out = int(model.output_shape[-1])
    ci = class_index
    heatmaps = np.zeros((n, height, width), dtype=np.float32)
    for start in range(0, n, batch_size):
        batch = x[start:start + batch_size]
        ci_batch = ci if ci is None or np.ndim(ci) == 0 else np.asarray(ci)[start:start + batch_size]
        maps, grads, out = _grads(forward, batch, ci_batch, n_out)
        if start == 0 and len(path) > 1:
            reference = keras.ops.convert_to_numpy(model(batch, training=False))
            if not np.allclose(out, reference, rtol=1e-3, atol=1e-4):
                raise NotImplementedError(f"model {model.name!r} is not a chain of layers around its nested "
                                          "model; pass a model built like models.full_transfer_model")
        weights = grads.mean(axis=(1, 2))                     # (b, c)
        cams = np.maximum(np.einsum("bhwc,bc->bhw", maps, weights), 0.0)
        for i, cam in enumerate(cams):
            peak = cam.max()
            cam = cam / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(cam)
            heatmaps[start + i] = np.clip(resize_float(cam, height, width), 0.0, 1.0)
    return heatmaps


OUTCOMES = ("true positive", "false positive", "false negative", "true negative")


def plot_gradcam_grid(images: np.ndarray, heatmaps: np.ndarray, y_true: Sequence[int], y_pred: np.ndarray,
                      classes: Sequence[str], title: str, max_per_group: int = 4, positive: str = "covid",
                      threshold: float = 0.5):
    """Grad-CAM overlays in rows of true positive / false positive / false negative / true negative.

    ``y_true``: class indices. ``y_pred``: scores from ``training.predict_scores``,
    (n,) positive-class scores for a one-sigmoid model (predicted positive when
    >= ``threshold``) or (n, k) softmax scores (predicted class = argmax).
    Outcomes are relative to ``positive``. Each panel shows the true class and the
    positive-class score; ``title`` should name the model and its weights.
    """
    from ..plots import plt
    classes = list(classes)
    pos = classes.index(positive)
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(y_pred, dtype=float)
    if scores.ndim == 1:
        if len(classes) != 2:
            raise ValueError("1-D scores need two classes (negative, positive)")
        pred = np.where(scores >= threshold, pos, 1 - pos)
        pos_score = scores if pos == 1 else 1 - scores
    else:
        pred, pos_score = scores.argmax(axis=1), scores[:, pos]
    true_pos, pred_pos = y_true == pos, pred == pos
    groups = {"true positive": true_pos & pred_pos, "false positive": ~true_pos & pred_pos,
              "false negative": true_pos & ~pred_pos, "true negative": ~true_pos & ~pred_pos}
    fig, axes = plt.subplots(len(OUTCOMES), max_per_group, figsize=(2.6 * max_per_group, 2.9 * len(OUTCOMES)),
                             squeeze=False)
    for row, outcome in enumerate(OUTCOMES):
        idx = np.flatnonzero(groups[outcome])[:max_per_group]
        for col in range(max_per_group):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(idx):
                i = idx[col]
                img = np.asarray(images[i])
                gray = img[..., 0] if img.ndim == 3 else img
                ax.imshow(blend(np.clip(gray, 0, 255).astype(np.uint8), heatmaps[i]))
                ax.set_title(f"{classes[y_true[i]]}, P({positive})={pos_score[i]:.2f}", fontsize=8)
            elif col == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        axes[row, 0].text(-0.08, 0.5, f"{outcome} ({int(groups[outcome].sum())})", rotation=90,
                          ha="right", va="center", transform=axes[row, 0].transAxes, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
