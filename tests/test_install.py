"""The install is lean and single (issue 20): one TensorFlow, no CUDA libraries, and `pip check` clean
but for the two extras the Makefile installs without their dependencies on purpose."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each asks for `tensorflow` by name, which tensorflow-cpu provides (see the Makefile's EXTRA comment).
ALLOWED_PIP_CHECK = (
    re.compile(r"^tf-keras [\w.]+ requires tensorflow, which is not installed\.$"),
    re.compile(r"^keras-hub [\w.]+ requires tensorflow-text, which is not installed\.$"),
)


def locked() -> dict[str, str]:
    """name -> pinned version of every package in requirements.txt."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if m:
            pins[re.sub(r"\[.*\]", "", m.group(1)).lower()] = m.group(2)
    return pins


def test_the_lock_holds_one_tensorflow_and_no_cuda_libraries():
    pins = locked()
    assert "tensorflow-cpu" in pins and "tensorflow" not in pins, sorted(p for p in pins if "tensorflow" in p)
    assert not [p for p in pins if p.startswith("nvidia-") or p == "triton"]
    assert pins["torch"].endswith("+cpu"), pins["torch"]
    assert "tensorflow-text" not in pins and "tf-keras" not in pins  # they would pull `tensorflow`


def test_pip_check_reports_only_the_documented_lines():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip() and ln != "No broken requirements found."]
    unexpected = [ln for ln in lines if not any(p.match(ln) for p in ALLOWED_PIP_CHECK)]
    assert not unexpected, unexpected


def test_the_allowed_lines_are_exactly_the_no_deps_extras():
    """The allow-list must not drift from what the Makefile installs without dependencies."""
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = sorted(re.split(r"[=<>!]", req)[0] for group in ("bench", "detector") for req in extras[group])
    assert names == ["keras-hub", "tf-keras"]
    assert not any(p.match("torch 2.13.0 requires sympy, which is not installed.") for p in ALLOWED_PIP_CHECK)
