"""Speed benchmarks of the workbook against the reference way of doing the same work.

``python -m benchmarks [--short] [--repeats N] [--output outputs/benchmarks.json]``
runs seven benchmarks and writes one JSON file (schema in ``benchmarks/README.md``):

1. ``input_pipeline``: images/s delivered to ``model.fit`` (cached arrays + Keras
   augmentation layers vs ``ImageDataGenerator.flow_from_directory``);
2. ``frozen_backbone``: wall time to train a VGG16 head (features once vs the
   frozen base inside the model);
3. ``workbook``: per-notebook and total time of ``run --profile smoke``;
4. ``backbone_features``: VGG16 features through ONNX Runtime vs Keras, images/s;
5. ``prediction``: cold start of ``python -m cxrbook predict`` and warm per-image latency, per model type;
6. ``app_load``: the web app (``python -m cxrbook serve``) with 20 concurrent users x 10 uploads, on SQLite
   and PostgreSQL: requests/s, latency p50/p95, errors, and nothing lost;
7. ``int8``: the int8 engine (static quantization, ONNX Runtime) against fp32 ONNX Runtime for VGG16
   features and every ``predict`` model type, with each model's accuracy check on the test split.

TensorFlow is imported only by the modules that need it, and never together
with torchvision / torchxrayvision (that combination segfaults).
"""

SCHEMA_VERSION = 3  # 2: backbone_features; prediction per model type with goals. 3: int8; frozen_backbone's
                    # ratio_bound renamed pass_ratio (not a bound), with seconds_per_base_pass
