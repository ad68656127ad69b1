"""Notebook 07, the trust audit: does a model read the lungs, or where the image came from?

- ``runs``: one audited run (a model variant trained and scored, optionally on masked images).
- ``checks``: the audit's checks (adult vs all normals, source probe, CLAHE, masks) and ``audit.json``.
- ``subgroups``: existing models by view, sex and label, and their calibration.
- ``text`` and ``plots``: the generated sentences and the figures, from the numbers.
"""
