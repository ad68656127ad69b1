"""Notebook 08, external validation: every saved model on two hospitals it never saw.

- ``scores``: every model scored on the external collections, and the ``external.json`` record.
- ``text``: the paragraph generated from those numbers.
- ``plots``: internal-vs-external forest plot and score distributions.

The collections themselves are loaded by ``cxrbook.data.external_collections``.
"""
