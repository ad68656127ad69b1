"""How every model is judged: thresholds on validation, metrics with patient intervals, the records.

- ``metrics``: thresholds, metrics and their patient-level intervals.
- ``intervals``: the interval methods (Wilson on design-effect-adjusted counts, Hanley-McNeil score,
  bootstrap-t, BCa over patients), chosen by the coverage study ``tests/interval_study.py``.
- ``records``: the metrics record (one JSON per model), its schema, checks and tables.
- ``metric_plots``: ROC/PR curves, confusion matrices, reliability diagrams.
- ``experiment``: the train -> score -> evaluate -> save steps notebooks 04-07 share.
- ``comparison``: notebook 06's table, paired AUC tests and the published claims.
- ``ensemble_choice``: notebook 06's ensemble members and weights, chosen on validation only.
"""
