"""Notebooks 01-03 and every image the workbook reads: the collections, their cleaning, the patient splits.

- ``metadata``: the three training collections loaded into one tidy table, labels normalised (01).
- ``images``: the one image decoder (grayscale, 16-bit, RGBA, DICOM refused) and resizing.
- ``cleaning``: which rows are kept, every dropped row logged with its reason (02).
- ``splits``: class selection by task and the patient-level stratified split (03).
- ``pipeline``: decode every split image once and cache the pixel arrays for 04-09.
- ``external_collections``: the two external test collections of notebook 08 (never for training).
- ``eda``: the metadata and split-composition charts of notebooks 01 and 03.
- ``synthetic``: small generated stand-ins for every collection, for tests and offline benchmarks.
"""
