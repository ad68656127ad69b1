"""Figure style and the one figure-saving helper every notebook uses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "nbagg", "widget")):
    matplotlib.use("Agg")  # headless runs (CI, CLI); notebooks keep their inline backend
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_write  # noqa: E402


def set_style() -> None:
    """Readable defaults shared by all notebooks."""
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight"})


class SavedFigure(type(Path())):
    """The path of a saved figure. A notebook cell ending in ``savefig(...)`` shows the
    figure only, not an ``Out[]: PosixPath(...)`` line above it (IPython calls
    ``_ipython_display_`` instead of echoing the value)."""

    def _ipython_display_(self) -> None:
        return None


def savefig(fig: plt.Figure, figures_dir: str | Path, name: str) -> SavedFigure:
    """Save ``fig`` as ``figures_dir/name.png`` (stable name, no timestamp) and return the path.

    Refuses a figure without a title on any axes: every saved plot says what it shows.
    The returned path is a ``pathlib.Path`` that notebooks do not echo.
    """
    titled = bool(fig._suptitle and fig._suptitle.get_text()) or any(ax.get_title() for ax in fig.axes)
    if not titled:
        raise ValueError(f"figure {name!r} has no title; give it one before saving")
    path = SavedFigure(figures_dir) / f"{name}.png"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version/timestamp: stable bytes
    return path
