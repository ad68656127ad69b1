"""ONNX Runtime sessions for the workbook's exported models (imports neither TensorFlow nor Keras).

``OnnxModel`` runs one ``.onnx`` file on the CPU with the few methods of a Keras
model the workbook calls (``predict``, ``predict_on_batch``, ``output_shape``,
``name``), so ``backbones.extract_features`` and ``inference`` take either.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class OnnxModel:
    """An ONNX model in an ONNX Runtime session (CPU): one input (e.g. raw RGB [0, 255] images), outputs out.

    ``threads``: intra-op threads (default: ONNX Runtime's, one per physical core). ``model_bytes``: the
    file's content, already read (and hashed) by the caller, so the bytes checked are the bytes run.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, model_bytes: bytes | None = None):
        import onnxruntime as ort
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path) if model_bytes is None else model_bytes, options,
                                            providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        out = self.session.get_outputs()[0]
        self.output_shape = tuple(d if isinstance(d, int) else None for d in out.shape)
        self.name = self.path.stem

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """Outputs of one batch, float32."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Outputs of ``x`` in batches of ``batch_size``."""
        x = np.asarray(x, np.float32)
        if len(x) <= batch_size:
            return self.predict_on_batch(x)
        return np.concatenate([self.predict_on_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
