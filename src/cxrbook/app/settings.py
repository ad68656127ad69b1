"""The app's configuration: folders, database URL, limits and the secret key.

Every value has a default that works on a fresh clone after ``make report``; the command line
(``python -m cxrbook serve --help``) and environment variables (``CXR_DB_URL``, ``CXR_SECRET_KEY``,
``CXR_APP_DATA``, ...) override them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cxrbook.config import default_output_dir

SECRET_FILE = "secret_key"


def _outputs() -> Path:
    """The workbook's outputs folder ($CXR_OUTPUT_DIR, else the workbook in or above the current folder),
    never a folder derived from where the package is installed."""
    return default_output_dir()[0]


@dataclass
class Settings:
    """Everything the app reads at start-up; ``data_dir`` holds the SQLite file, the images and the secret key."""

    models_dir: Path = field(default_factory=lambda: _outputs() / "models")
    outputs_dir: Path = field(default_factory=_outputs)
    data_dir: Path = field(default_factory=lambda: _outputs().parent / "app_data")  # not under outputs/:
    # `make clean-outputs` must not delete accounts
    db_url: str | None = None                   # None: SQLite file data_dir/cxrbook_app.sqlite3
    secret_key: str | None = None               # None: CXR_SECRET_KEY, else data_dir/secret_key (made once, 0600)
    max_upload_bytes: int = 20 * 1024 * 1024     # per image file -> 413 above it
    max_files: int = 10                          # images per upload
    max_pixels: int = 40_000_000                 # decoded pixels per image (decompression bombs stop here)
    login_window_s: int = 15 * 60                # failed logins are counted over this window
    max_failures_account: int = 5                # per username per window -> 429
    max_failures_address: int = 20               # per client address per window -> 429
    session_max_age_s: int = 8 * 3600
    token_max_age_s: int = 30 * 24 * 3600
    https_only: bool = False                     # Secure cookie flag; set behind HTTPS
    default_model: str | None = None
    extra: dict = field(default_factory=dict)

    def resolved_db_url(self) -> str:
        """The SQLAlchemy URL: ``db_url``, else ``CXR_DB_URL``, else SQLite under ``data_dir``."""
        url = self.db_url or os.environ.get("CXR_DB_URL")
        if url:
            return url
        return f"sqlite:///{(self.data_dir / 'cxrbook_app.sqlite3').resolve()}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def max_request_bytes(self) -> int:
        """Whole-request cap: every file at its limit plus room for the form fields."""
        return self.max_upload_bytes * self.max_files + 64 * 1024


def from_env(**overrides) -> Settings:
    """Settings from ``CXR_APP_*`` environment variables (how worker processes get the command line's choices)."""
    env = os.environ
    s = Settings()
    if env.get("CXR_APP_MODELS"):
        s.models_dir = Path(env["CXR_APP_MODELS"])
    if env.get("CXR_APP_OUTPUTS"):
        s.outputs_dir = Path(env["CXR_APP_OUTPUTS"])
    if env.get("CXR_APP_DATA"):
        s.data_dir = Path(env["CXR_APP_DATA"])
    if env.get("CXR_APP_MAX_UPLOAD_MB"):
        s.max_upload_bytes = int(float(env["CXR_APP_MAX_UPLOAD_MB"]) * 1024 * 1024)
    if env.get("CXR_APP_HTTPS_ONLY"):
        s.https_only = env["CXR_APP_HTTPS_ONLY"] not in ("0", "", "false")
    if env.get("CXR_APP_DEFAULT_MODEL"):
        s.default_model = env["CXR_APP_DEFAULT_MODEL"]
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


def secret_key(settings: Settings) -> str:
    """The key that signs session cookies: ``settings.secret_key``, else ``CXR_SECRET_KEY``, else the file
    ``data_dir/secret_key``, generated once with owner-only permissions (0600) and reused afterwards."""
    if settings.secret_key:
        return settings.secret_key
    if os.environ.get("CXR_SECRET_KEY"):
        return os.environ["CXR_SECRET_KEY"]
    path = settings.data_dir / SECRET_FILE
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # write a private temporary file, then link it in place: no reader sees half a key
        tmp = settings.data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:  # another worker made it a moment ago: use theirs
            pass
        finally:
            tmp.unlink()
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable secret key (fewer than 32 characters); delete it to make a new "
                         "one (every session cookie becomes invalid)")
    return key
