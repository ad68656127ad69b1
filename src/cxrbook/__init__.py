"""cxrbook: a reproducible, honestly evaluated chest X-ray workbook.

Submodules are imported lazily on purpose: importing TensorFlow before
torchvision/torchxrayvision segfaults, so nothing heavy is imported here.
"""

__version__ = "0.1.0"
