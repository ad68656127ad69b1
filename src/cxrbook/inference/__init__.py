"""Using a saved model on new images: ``predict``, ``evaluate``, the notebook widget and the web app.

- ``saved_model``: a saved model's path loaded in one place, ``load_model(path) -> SavedModel`` (sidecar
  checked, ONNX file bound by SHA-256, engine, scores, Grad-CAM; nothing loaded runs code).
- ``predict``: preprocessing, decisions and the printed result for image files.
- ``folder``: score every image under a folder, with metrics when labels are given (``evaluate``).
- ``widget``: the upload picker and notebook 07's one-image example.

Imports no training code (a contract in pyproject.toml), so a score arrives without TensorFlow.
"""
