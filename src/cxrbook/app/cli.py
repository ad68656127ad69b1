"""``python -m cxrbook serve``'s arguments; imports nothing heavy (the app loads only when the command runs)."""

from __future__ import annotations


def add_command(subparsers) -> None:
    """Add ``serve`` to the ``python -m cxrbook`` parser."""
    s = subparsers.add_parser("serve", help="run the web app over outputs/models/ (research tool, not a diagnosis)",
                              description="Web app over the saved models: accounts, uploads, history and a JSON "
                                          "API (see the README's App section). Research tool, not a diagnosis.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="worker processes (each loads the models once)")
    s.add_argument("--models", help="folder of saved models (default: outputs/models)")
    s.add_argument("--outputs", help="outputs folder with metrics/ and external.json (default: outputs)")
    s.add_argument("--data", help="the app's data folder: SQLite file, images, secret key (default: app_data/ in "
                                  "the repository, outside outputs/ which make clean-outputs empties)")
    s.add_argument("--db", help="SQLAlchemy database URL (default: $CXR_DB_URL, else SQLite under --data)")
    s.add_argument("--max-upload-mb", type=float, help="largest image file accepted, in MiB (default 20)")
    s.add_argument("--default-model", help="model preselected on the upload page (a file stem)")
    s.add_argument("--log-level", default="info")
    s.add_argument("--migrate-only", action="store_true", help="upgrade the database and exit")
    s.set_defaults(func=lambda a: __import__("cxrbook.app.main", fromlist=["main_serve"]).main_serve(a))
