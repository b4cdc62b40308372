"""benchmarks/common.py's write_section, through which the benchmark scripts report: the section always
goes to the working folder (benchmarks/work/reports/), and into the tracked RESULTS.md only with
`record`, replacing a section of the same title in place or appending a new one (issue 13, point 6).
Also: the speed benchmarks take --record, no longer --no-results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The scripts in benchmarks/ import their sibling modules by name, as `python benchmarks/X.py` does.
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import speed_common  # noqa: E402

TRACKED = """# Benchmark results

Intro.

## Results table (issue 13)

<!-- results-table:start -->
| row | figure |
<!-- results-table:end -->

## First

_old stamp — old machine_

old first body

### a subsection of the first

old first detail

## Second

second body, kept
"""


@pytest.fixture
def paths(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text(TRACKED, encoding="utf-8")
    monkeypatch.setattr(common, "RESULTS", results)
    monkeypatch.setattr(common, "WORK", tmp_path / "work")
    monkeypatch.setattr(common, "machine", lambda: "test machine")  # without importing torch
    return results, tmp_path / "work"


def test_without_record_only_the_working_folder_is_written(paths, capsys):
    results, work = paths
    written = common.write_section("First", "new first body\n\n### new detail\n", record=False)
    assert results.read_text(encoding="utf-8") == TRACKED
    assert written == work / "reports" / "first.md"
    text = written.read_text(encoding="utf-8")
    assert text.startswith("## First\n\n_") and " UTC — test machine_\n\nnew first body\n\n### new detail\n" in text
    assert str(written) in capsys.readouterr().out
    # Written again, the working-folder file is replaced, not appended to.
    common.write_section("First", "newer body", record=False)
    assert "new first body" not in written.read_text(encoding="utf-8")


def test_with_record_a_section_of_the_same_title_is_replaced_in_place(paths):
    results, work = paths
    common.write_section("First", "new first body", record=True)
    text = results.read_text(encoding="utf-8")
    before, after = TRACKED.split("## First\n")[0], "## Second\n\nsecond body, kept\n"
    assert text.startswith(before) and text.endswith("\n\n" + after)
    assert "old first body" not in text and "old first detail" not in text and "old stamp" not in text
    assert text.count("## First\n") == 1 and " UTC — test machine_\n\nnew first body\n\n## Second" in text
    assert "<!-- results-table:start -->\n| row | figure |\n<!-- results-table:end -->" in text
    assert (work / "reports" / "first.md").read_text(encoding="utf-8") in text

    # The last section, too: up to the end of the file.
    common.write_section("Second", "second body, new", record=True)
    text = results.read_text(encoding="utf-8")
    assert "second body, kept" not in text and text.endswith(" UTC — test machine_\n\nsecond body, new\n")
    assert "new first body\n\n## Second\n" in text


def test_with_record_a_new_title_is_appended(paths):
    results, _ = paths
    common.write_section("Third: a new one (issue 99)", "third body", record=True)
    text = results.read_text(encoding="utf-8")
    assert text.startswith(TRACKED.rstrip("\n") + "\n\n## Third: a new one (issue 99)\n\n_")
    assert text.endswith("test machine_\n\nthird body\n") and "old first body" in text
    assert (paths[1] / "reports" / "third-a-new-one-issue-99.md").is_file()


def test_a_missing_results_file_is_started(paths):
    results, _ = paths
    results.unlink()
    common.write_section("First", "body", record=True)
    text = results.read_text(encoding="utf-8")
    assert text.startswith(common.RESULTS_HEADER) and "## First\n" in text


def test_a_body_with_a_level_two_heading_and_the_marked_sections_are_refused(paths):
    results, _ = paths
    with pytest.raises(ValueError, match="### or deeper"):
        common.write_section("First", "text\n## Not a subsection\n", record=True)
    with pytest.raises(ValueError, match="results-table:start"):
        common.write_section("Results table (issue 13)", "a table", record=True)
    assert results.read_text(encoding="utf-8") == TRACKED


def test_the_speed_benchmarks_take_record_not_no_results():
    parser = speed_common.speed_arguments("test")
    assert parser.parse_args([]).record is False
    assert parser.parse_args(["--record"]).record is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-results"])


def test_no_benchmark_script_keeps_the_old_flags_or_appends():
    for script in (ROOT / "benchmarks").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        for old in ("--no-results", "--no-record", "no_results", "no_record", "import append", " append("):
            assert old not in source, f"{script.name}: {old}"
