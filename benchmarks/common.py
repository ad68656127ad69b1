"""Helpers every benchmark shares: repeat statistics, the benchmark data, subsets."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

TASK = "covid_vs_normal"
NORMALS = "all"


def summary(values: Sequence[float], unit: str, digits: int = 4) -> dict:
    """Median, min and max of repeated measurements, plus every run (in the order taken)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("no measurements")
    return {"median": round(statistics.median(v), digits), "min": round(min(v), digits),
            "max": round(max(v), digits), "runs": [round(x, digits) for x in v], "unit": unit}


@contextmanager
def stopwatch() -> Iterator[dict]:
    """``with stopwatch() as t: ...``; afterwards ``t["seconds"]`` holds the wall time."""
    t: dict = {}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["seconds"] = time.perf_counter() - start


def say(msg: str) -> None:
    """Progress line on stdout (flushed: the runs take minutes)."""
    print(msg, flush=True)


@dataclass
class BenchData:
    """The benchmark's images: the patient-level split of covid_vs_normal (normals=all)."""

    data_dir: Path
    source: str            # "real" ($CXR_DATA_DIR) or "generated" (synthetic.make_fake_collections)
    splits: pd.DataFrame   # image_path, patient_id, source, label, split
    classes: tuple[str, ...]
    seconds_setup: float   # load_all + clean + select + patient_split (+ generation)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, sorted by image_path (the order load_arrays stores)."""
        return self.splits[self.splits["split"] == name].sort_values("image_path").reset_index(drop=True)

    def describe(self) -> dict:
        """Images per split and label, for the JSON."""
        counts = self.splits.groupby(["split", "label"]).size()
        return {s: {lab: int(n) for (sp, lab), n in counts.items() if sp == s} for s in ("train", "val", "test")}


def generated_data_dir(workdir: Path, short: bool, seed: int) -> Path:
    """Fake collections under ``workdir``: few small images in short mode, more and larger otherwise."""
    from cxrbook.data.synthetic import make_fake_collections
    root = workdir / "generated_data"
    if short:
        return make_fake_collections(root, n_patients=4, image_size=128, seed=seed)
    # 512 px like the pediatric collection, so decoding costs what it costs on real files.
    return make_fake_collections(root, n_patients=40, image_size=512, seed=seed)


def load_bench_data(workdir: Path, short: bool, seed: int) -> BenchData:
    """Real data when CXR_DATA_DIR is set, else generated; load_all -> clean -> select -> patient_split."""
    from cxrbook.data.cleaning import clean
    from cxrbook.config import DATA_ENV, resolve_data_dir
    from cxrbook.data.metadata import load_all
    from cxrbook.data.splits import classes_for, patient_split, select

    start = time.perf_counter()
    if os.environ.get(DATA_ENV):
        data_dir, source = resolve_data_dir(), "real"
    else:
        data_dir, source = generated_data_dir(workdir, short, seed), "generated"
    kept, _ = clean(load_all(data_dir))
    splits = patient_split(select(kept, TASK, NORMALS), seed=seed)
    return BenchData(data_dir=Path(data_dir), source=source, splits=splits, classes=classes_for(TASK),
                     seconds_setup=round(time.perf_counter() - start, 2))


def stratified_subset(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows keeping the label proportions (every label keeps >= 1 row); sorted by image_path."""
    if n is None or n >= len(df):
        return df.sort_values("image_path").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    parts = []
    for _, group in df.groupby("label", sort=True):
        k = max(1, int(round(n * len(group) / len(df))))
        parts.append(group.iloc[rng.permutation(len(group))[:k]])
    return pd.concat(parts).sort_values("image_path").reset_index(drop=True)


def with_goal(stats: dict, goal: str, met: bool) -> dict:
    """A stats object with its goal and whether the median meets it."""
    return {**stats, "goal": goal, "met": bool(met)}
