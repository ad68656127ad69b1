"""Documents assembled from ``outputs/``: the README's generated tables.

- ``tables``: every results table of the README (``python -m cxrbook tables``).
- ``speed_table``: the speed table from ``make bench``'s ``benchmarks.json``.
- ``table_text``: the small text pieces those tables share.
"""
