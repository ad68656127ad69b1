"""Documents assembled from ``outputs/``: the README's generated tables and the HTML index.

- ``tables``: every results table of the README (``python -m cxrbook tables``).
- ``speed_table``: the speed table from ``make bench``'s ``benchmarks.json``.
- ``table_text``: the small text pieces those tables share.
- ``index``: ``outputs/index.html`` (``python -m cxrbook index``; the runner calls it when a run ends).
"""
