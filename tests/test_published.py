"""The reproduction table: published numbers typed once (harness/report/published.toml), the
docs page rendered from them, every entry naming a suite that exists."""

from pathlib import Path

import pytest

from harness.report.published import Published, published_for, published_numbers, reproduction_table

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_page_shows_the_table_of_the_file():
    page = (REPO / "docs" / "reproduction.md").read_text()
    table = page.split("<!-- reproduction-table -->\n")[1].split("\n<!-- /reproduction-table -->")[0]
    assert table == reproduction_table()


def test_every_entry_names_a_suite_of_the_checkout_and_a_source():
    for entry in published_numbers():
        suite = entry.suite.split()[0]
        assert (REPO / suite).is_file(), (entry.method, entry.dataset, suite)
        assert entry.source and entry.protocol


def test_cifar10_jpeg_is_shown_beside_cifar10s_numbers_and_unknown_cells_get_none():
    assert [p.accuracy for p in published_for("cifar10-jpeg", 10, "rat_bptt")] == [69.4]
    assert published_for("digits", 10, "rat_bptt") == []


def test_an_entry_with_an_unknown_status_or_label_kind_is_refused():
    good = published_numbers()[0].model_dump()
    with pytest.raises(ValueError):
        Published(**{**good, "status": "probably"})
    with pytest.raises(ValueError):
        Published(**{**good, "labels": "soft-ish"})
