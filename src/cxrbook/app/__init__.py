"""``python -m cxrbook serve``: a small web app over the saved models in ``outputs/models/``.

Accounts (argon2id passwords, signed session cookies, CSRF tokens, failed-login limits), uploads
scored by the workbook's ONNX Runtime path with a Grad-CAM overlay, each result beside the model's
caution and track record, per-user history, and a JSON API with bearer tokens. Storage is
SQLAlchemy 2 (SQLite by default, any URL via ``--db``/``CXR_DB_URL``) with Alembic migrations.

Modules: ``settings`` (configuration and the secret key), ``db`` (tables, engine, migrations),
``security`` (hashing, tokens, CSRF, login limits), ``storage`` (uploaded files), ``scoring`` (the
one adapter to the rest of cxrbook), ``track_record`` (the model's recorded tests as a sentence),
``service`` (what the routes do), ``pages`` and ``api`` (thin routes), ``main`` (the app and the
server). Research tool, not a diagnosis.
"""
