"""`python -m cxrbook tables`: README tables generated from outputs/, and the README cannot drift.

The fixture folder ``tests/fixtures/outputs_small`` is written by
``tests/fixtures/make_outputs_small.py`` (the real metrics / comparison / audit
code on small generated inputs); ``tables_expected.md`` is the command's output
on it, committed and reviewed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cxrbook.__main__ import main
from cxrbook.reporting.tables import SECTIONS, check, fill, readme_blocks, render

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "outputs_small"
EXPECTED = HERE / "fixtures" / "tables_expected.md"
README = HERE.parent / "README.md"


@pytest.fixture
def outputs(tmp_path) -> Path:
    """A writable copy of the fixture outputs."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "outputs"))


def marked_readme(path: Path, sections=SECTIONS) -> Path:
    """A README with hand-written prose and an empty marker pair per section."""
    body = "\n\n".join(f"Prose about {s}.\n\n<!-- tables:{s}:start -->\nold\n<!-- tables:{s}:end -->"
                       for s in sections)
    path.write_text(f"# Title\n\n{body}\n\nClosing prose.\n", encoding="utf-8")
    return path


def test_command_reproduces_committed_tables(capsys):
    assert main(["tables", "--outputs", str(FIXTURE)]) == 0
    assert capsys.readouterr().out == EXPECTED.read_text(encoding="utf-8")


def test_nulls_and_interval_flags_are_shown(capsys):
    blocks = render(FIXTURE)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in blocks["comparison"].text.splitlines()
             if line.startswith("| ")]
    rows = {c[0]: dict(zip(cells[0], c)) for c in cells[1:]}
    assert rows["custom CNN (reference)"]["ROC AUC"] == "n/a"                       # null value
    logreg = rows["logistic regression, 32x32 pixels"]                              # constant scores:
    assert logreg["ROC AUC"] == "0.500 [0.500, 0.500]‡"                             # degenerate, flagged
    assert logreg["specificity"].startswith("1.000 [0.") and logreg["specificity"].endswith("1.000]")  # not 0 wide
    assert "‡ zero-width interval of a degenerate model: its scores are constant" in blocks["comparison"].text
    # an interval that excludes its point estimate is marked by the same formatter the tables use
    from cxrbook.evaluation.records import fmt
    assert fmt({"value": 0.1, "ci95": [0.2, 0.3]}) == "0.100 [0.200, 0.300]†"
    assert rows["VGG16 frozen + head"]["accuracy"][-1] == "]"                       # no flag, no symbol
    assert "\n‡ " in blocks["comparison"].text and "\n† " not in blocks["comparison"].text  # only used flags
    # every table names how its intervals were made
    for name in ("comparison", "paired", "claims", "audit", "external"):
        assert "Intervals (95%): " in blocks[name].text, name
    assert "accuracy, sensitivity, specificity: Wilson interval on the design-effect-adjusted number of images" \
        in blocks["comparison"].text
    assert "ROC AUC: Hanley-McNeil score interval" in blocks["comparison"].text
    assert "| n/a |" in blocks["external"].text                             # null external specificity


def test_write_readme_then_check_then_a_changed_number_fails(tmp_path, outputs, capsys):
    readme = marked_readme(tmp_path / "README.md")
    assert main(["tables", "--outputs", str(outputs), "--check", str(readme)]) == 1   # stale "old"
    assert main(["tables", "--outputs", str(outputs), "--write-readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "Prose about audit." in text and "Closing prose." in text and "\nold\n" not in text
    for name, block in render(outputs).items():
        assert f"<!-- tables:{name}:start -->\n{block.text}\n<!-- tables:{name}:end -->" in text
    assert main(["tables", "--outputs", str(outputs), "--check", str(readme)]) == 0
    # a number typed into the README
    readme.write_text(text.replace("0.958 [0.657, 0.996]", "0.959 [0.657, 0.996]", 1), encoding="utf-8")
    assert main(["tables", "--outputs", str(outputs), "--check", str(readme)]) == 1
    assert "comparison: README block differs" in capsys.readouterr().out
    # a number changed in the outputs
    readme.write_text(text, encoding="utf-8")
    p = outputs / "benchmarks.json"
    b = json.loads(p.read_text())
    b["input_pipeline"]["ratio"]["median"] = 4.2
    p.write_text(json.dumps(b))
    assert main(["tables", "--outputs", str(outputs), "--check", str(readme)]) == 1
    assert "speed: README block differs" in capsys.readouterr().out


def test_missing_inputs_say_what_to_run_and_leave_the_readme_block(tmp_path, outputs, capsys):
    (outputs / "audit.json").unlink()
    (outputs / "external.json").unlink()
    (outputs / "lungs.json").unlink()
    blocks = render(outputs)
    assert blocks["audit"].missing and "run notebook 07" in blocks["audit"].text
    assert not blocks["external"].missing and "not run" in blocks["external"].text
    assert not blocks["lungs"].missing and "Lungs only: not run" in blocks["lungs"].text
    readme = marked_readme(tmp_path / "README.md")
    assert main(["tables", "--outputs", str(outputs), "--write-readme", str(readme)]) == 0
    assert "audit: left unchanged" in capsys.readouterr().out
    assert "<!-- tables:audit:start -->\nold\n<!-- tables:audit:end -->" in readme.read_text()
    assert any(p.startswith("audit: cannot check") for p in check(readme.read_text(), blocks))


def test_a_broken_input_file_is_named_not_a_crash(outputs):
    (outputs / "metrics" / "vgg16.json").unlink()
    (outputs / "audit.json").write_text("{not json")
    blocks = render(outputs)
    assert "vgg16.json is listed in comparison.csv but missing" in blocks["comparison"].missing
    assert "audit.json: not valid JSON" in blocks["audit"].missing
    assert not blocks["speed"].missing


def test_malformed_markers_are_named():
    with pytest.raises(ValueError, match="tables:audit:start' appears twice"):
        readme_blocks("<!-- tables:audit:start -->\n<!-- tables:audit:start -->")
    with pytest.raises(ValueError, match=r"without an end: \['speed'\]"):
        readme_blocks("<!-- tables:speed:start -->\ntext")
    with pytest.raises(ValueError, match="unknown table section"):
        readme_blocks("<!-- tables:nonsense:start -->\n<!-- tables:nonsense:end -->")
    assert fill("no markers", render(FIXTURE))[1][0] == "comparison: no markers in README, not written"


# --------------------------------------------------------------------------- the real README

# What looks like a result: a decimal in [0, 2), a percentage, a ratio like 4.08x / 36x,
# a decimal time, an interval half-width like ±3.
METRIC_LIKE = re.compile(r"(?<![\w.])(?:[01]\.\d{1,4}(?![\w.])|\d+(?:\.\d+)?%|\d+(?:\.\d+)?x(?!\w)"
                         r"|\d+\.\d+ ?(?:s|ms|min|MiB|img/s)(?!\w))|±\s?\d+")
# Numbers allowed outside generated blocks. Keep this list small.
ALLOWED = {
    "95%",                                           # the confidence level of every interval
    "92.9%", "96.1%", "96.5%", "94.92%", "92.00%",   # published claims (comparison.PUBLISHED_CLAIMS)
    "0.70", "0.76",                                  # DeGrave et al. 2021, external AUC range (literature)
}


def metric_like_outside_blocks(text: str) -> set[str]:
    """Metric-looking numbers of ``text`` outside its generated blocks, minus ALLOWED."""
    for a, z in sorted(readme_blocks(text).values(), reverse=True):
        text = text[:a] + text[z:]
    return {m.group() for m in METRIC_LIKE.finditer(text)} - ALLOWED


def test_readme_metrics_live_only_in_generated_blocks():
    text = README.read_text(encoding="utf-8")
    assert set(readme_blocks(text)) >= set(SECTIONS)
    assert metric_like_outside_blocks(text) == set()


def test_the_readme_scan_catches_a_hand_typed_metric():
    text = "<!-- tables:speed:start -->\nAUC 0.912, 4.08x\n<!-- tables:speed:end -->\n"
    assert metric_like_outside_blocks(text) == set()
    assert metric_like_outside_blocks(text + "We reach AUC 0.912 and 61.5% accuracy, 4.08x faster, ±2 points.") \
        == {"0.912", "61.5%", "4.08x", "±2"}


def test_fixture_paragraph_is_generated_from_its_numbers():
    """The external paragraph under the fixture's table is what the code generates from the fixture's own
    numbers (no hand-typed paragraph), and it names the numbers it counts."""
    from cxrbook.external.scores import validate_external
    from cxrbook.external.text import external_paragraph
    record = json.loads((FIXTURE / "external.json").read_text())
    validate_external(record)
    assert record["paragraph"] == external_paragraph(record)
    assert record["paragraph"] in render(FIXTURE)["external"].text


def test_code_stamp_counts_an_untracked_module_as_uncommitted(tmp_path):
    """Every table names the commit of its code and whether it was dirty: a new module not yet added to git
    runs but is in no commit, so the stamp must say "dirty"; an ignored output file must not."""
    import subprocess
    from cxrbook.provenance import git_commit
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("outputs/\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "metrics.json").write_text("{}")
    clean = git_commit(tmp_path)
    assert clean["commit"] and clean["dirty"] is False
    (tmp_path / "new_module.py").write_text("y = 2\n")
    assert git_commit(tmp_path)["dirty"] is True
