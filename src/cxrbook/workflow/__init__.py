"""Running the workbook: the papermill runner, its kernel and manifest, and the command line.

- ``runner``: execute the notebooks in order (``python -m cxrbook run``), then rebuild the HTML index
  (``cxrbook.reporting.index``).
- ``kernel``: the quiet ``cxrbook`` Jupyter kernel.
- ``manifest``: the run manifest (commit, package versions, data hash, timings, status).
- ``notebook``: the Setup section every notebook opens with.
- ``lock``: one run at a time per outputs folder.
- ``cli``: the ``run``, ``predict``, ``evaluate`` and ``tables`` commands: arguments, messages, exit codes.
"""
