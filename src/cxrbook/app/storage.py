"""Uploaded images and overlays on disk: random names under ``data_dir/images``, nothing a user sends in a path.

A stored name is 32 random hex characters plus a fixed suffix chosen here (``.upload`` or
``_gradcam.png``); :func:`path_of` accepts only names of that form, so even a corrupted
database row cannot point outside the folder.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

UPLOAD_SUFFIX = ".upload"
OVERLAY_SUFFIX = "_gradcam.png"
_NAME = re.compile(r"^[0-9a-f]{32}(\.upload|_gradcam\.png)$")
CHUNK = 1 << 20


class TooLarge(ValueError):
    """The upload exceeded the size limit (answered with 413)."""


class Store:
    """The folder of stored images; every name it hands out is random."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, name: str) -> Path:
        """The file of a stored ``name``; ValueError for anything that is not a name this store made."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"not a stored file name: {name!r}")
        return self.folder / name

    def save_stream(self, stream: BinaryIO, max_bytes: int) -> tuple[str, int]:
        """Copy ``stream`` to a new random file; (its name, bytes). TooLarge (nothing kept) above ``max_bytes``."""
        name = secrets.token_hex(16) + UPLOAD_SUFFIX
        path = self.path_of(name)
        size = 0
        try:
            with open(path, "xb") as out:
                while block := stream.read(CHUNK):
                    size += len(block)
                    if size > max_bytes:
                        raise TooLarge(f"the file is larger than the {max_bytes / 2**20:.0f} MiB limit")
                    out.write(block)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return name, size

    def overlay_name_for(self, image_name: str) -> str:
        return self.path_of(image_name).name.removesuffix(UPLOAD_SUFFIX) + OVERLAY_SUFFIX

    def delete(self, *names: str | None) -> None:
        """Remove stored files (missing ones are fine)."""
        for n in names:
            if n:
                self.path_of(n).unlink(missing_ok=True)

    def names(self) -> set[str]:
        """Every stored file name (tests and the load check count them)."""
        return {p.name for p in self.folder.iterdir() if _NAME.match(p.name)}
