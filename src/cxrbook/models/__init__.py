"""Notebooks 04-06: the networks, how they are trained and saved, and what is saved beside them.

- ``architectures``: the reference CNN, its improved variant, the transfer-learning heads.
- ``backbones``: frozen ImageNet bases and their cached features.
- ``training``: fit, score and save a Keras model with its sidecar and parity sample.
- ``layers``: custom Keras layers (augmentation, preprocessing) that saved models need.
- ``sidecar``: the JSON saved beside every model (classes, image size, threshold, normals), checked.
- ``ensemble``: the soft-voting ensemble's file and how its members' scores combine.
- ``gradcam`` and ``overlay``: Grad-CAM heatmaps and the captioned overlay image.
- ``onnx_export`` and ``onnx_session``: saved models to ONNX (checked in logit space, bound by SHA-256),
  and ONNX Runtime sessions.
- ``quantization``: static int8 versions of the ONNX models, calibrated on training images and checked.
"""
