"""Notebook 09, lungs only: a lung detector, and does cropping every image to the lungs remove the shortcut?

- ``study``: the detector on the real lung boxes against the mean box, every image cropped to its
  detected lungs, the classifiers retrained on the crops beside the uncropped ones, ``lungs.json``.
- ``text``: the paragraph generated from those numbers (Markdown).
- ``plots``: boxes on images, and cropped vs uncropped metrics.

The boxes are loaded by ``cxrbook.data.lung_boxes``, the detector is ``cxrbook.models.detection``,
its metrics ``cxrbook.evaluation.box_metrics``, and ``predict --crop-lungs`` crops through
``cxrbook.inference.lung_crop``.
"""
