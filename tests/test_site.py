"""The published site: its rows, ranking and grouping, its exports, its refusals, its
determinism, and the page itself in a real (headless) Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_record, typed
from harness.core.errors import DDBenchError
from harness.core.io import write_json_atomic
from harness.report.site import exports
from harness.report.site.build import publish
from harness.report.site.rows import boards, leaderboard_rows

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "results" / "smoke-cpu"


def _rows():
    diverged = make_record("bptt", run_id="d", status="diverged", accs=(0.1,))
    diverged["eval"].update(accuracy_mean=None, accuracy_std=None, accuracy_per_model=[])
    return leaderboard_rows(typed([
        make_record("rat_bptt", seed=0, run_id="r0", accs=(0.80, 0.82)),
        make_record("rat_bptt", seed=1, run_id="r1", accs=(0.84,)),
        make_record("random_real", run_id="rr", accs=(0.6, 0.62), outer_steps=0, seconds_per_step=0.0),
        make_record("tbptt", run_id="t", accs=(0.9, 0.7)),
        make_record("tbptt", run_id="t2", accs=(0.5, 0.5), config_id="other", suite="another"),
        diverged,
        make_record("rat_bptt", ipc=10, run_id="r10", accs=(0.95,)),
    ]))


def test_rows_rank_by_accuracy_pool_seeds_and_never_pool_configs():
    rows = _rows()
    ipc1 = boards(rows)[("digits", 1)]
    assert [(r.method, r.suite) for r in ipc1] == [("rat_bptt", "unit"), ("tbptt", "unit"), ("random_real", "unit"),
                                                   ("tbptt", "another"), ("bptt", "unit")]
    rat = ipc1[0]
    assert (rat.n_models, rat.n_seeds, rat.count) == (3, 2, "3 models, 2 seeds")
    assert rat.accuracy_mean == pytest.approx((0.80 + 0.82 + 0.84) / 3)
    assert ipc1[-1].status == "diverged" and ipc1[-1].accuracy_mean is None  # last, and no number
    assert ipc1[2].seconds_per_step is None  # random_real distils nothing
    assert len(leaderboard_rows(typed([make_record(run_id="x")] * 2))) == 1  # one run found twice: one row
    with pytest.raises(DDBenchError):  # the same run id with two results: refused
        leaderboard_rows(typed([make_record(run_id="x"), make_record(run_id="x", finished_at="2025-01-01")]))


def test_exports_render_the_same_rows():
    rows = _rows()
    md = exports.markdown(rows)
    assert "## digits, IPC 1" in md and "## digits, IPC 10" in md
    ipc1 = md.split("## digits, IPC 10")[0]
    order = [line.split("|")[2].strip() for line in ipc1.splitlines() if line.startswith("| ") and "rank" not in line]
    assert order == ["rat_bptt", "tbptt", "random_real", "tbptt", "bptt"]
    assert "82.00 ± 1.63" in md and "diverged" in md
    tex = exports.latex(rows)
    assert tex.count(r"\toprule") == 2 and r"random\_real" in tex and r"$\pm$" in tex
    assert "random_real" not in tex.replace(r"random\_real", "")


def test_publish_refuses_empty_and_malformed_folders(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = cli("publish", tmp_path / "empty", "--out", tmp_path / "site", "-q")
    assert code == 2 and "no run records found" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad"
    write_json_atomic(bad / "r.json", {**make_record(), "ipc": "ten"})
    code, out, err = cli("publish", bad, "--out", tmp_path / "site", "-q")
    assert code == 2 and str(bad / "r.json") in err and ": ipc: " in err and "Traceback" not in err
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def smoke_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    publish([SMOKE], out)
    return out


def test_the_site_is_complete_and_deterministic(smoke_site, tmp_path):
    names = {p.relative_to(smoke_site).as_posix() for p in smoke_site.rglob("*") if p.is_file()}
    assert {"index.html", "leaderboard.md", "leaderboard.tex", "assets/site.css", "assets/site.js"} <= names
    assert any(n.startswith("figures/accuracy-vs-ipc-") and n.endswith(".svg") for n in names)
    html = (smoke_site / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # every asset local
    again = tmp_path / "again"
    publish([SMOKE], again)
    for name in names:
        assert (again / name).read_bytes() == (smoke_site / name).read_bytes(), name


def _chromium():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_the_page_in_a_real_browser(smoke_site, tmp_path):
    from selenium.webdriver.common.by import By

    from harness.report import iter_records

    methods = {}
    for _, r in iter_records(SMOKE):
        methods.setdefault((r.dataset, r.ipc), set()).add(r.method)
    browser = _chromium()
    try:
        browser.get((smoke_site / "index.html").as_uri())
        tables = browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")
        assert len(tables) == len(methods)
        for table, key in zip(tables, sorted(methods)):
            names = [row.find_elements(By.TAG_NAME, "td")[1].get_attribute("data-value")
                     for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
            assert sorted(names) == sorted(methods[key])  # one row per method of the smoke records
        images = browser.find_elements(By.TAG_NAME, "img")
        assert images and all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                              for img in images)
        first = tables[0]
        before = [r.text for r in first.find_elements(By.CSS_SELECTOR, "tbody tr")]
        first.find_elements(By.TAG_NAME, "th")[1].click()  # the method column
        after = [r.text for r in first.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert sorted(after) == sorted(before) and after != before
        names = [r.find_elements(By.TAG_NAME, "td")[1].get_attribute("data-value")
                 for r in first.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert names == sorted(names)
        browser.save_screenshot(str(tmp_path / "site.png"))
        assert (tmp_path / "site.png").stat().st_size > 10_000
        # The dataset filter hides the other datasets' boards (all digits here: nothing hidden).
        assert not browser.find_elements(By.CSS_SELECTOR, "section.board.hidden")
    finally:
        browser.quit()


def test_live_tensorboard_log(write_suite, cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import tiny_suite

    code, _, err = cli("run", write_suite(tiny_suite(budget={"outer_steps": 3, "checkpoint_minutes": 10.0})),
                       "--out", tmp_path / "out", "-q", "--log", "tensorboard", tmp_path / "tb")
    assert code == 0, err
    (folder,) = [p for p in (tmp_path / "tb").iterdir() if "tbptt" in p.name]
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("distill/outer_loss")] == [0, 1, 2]
    code, _, err = cli("run", write_suite(tiny_suite(), "b.toml"), "--out", tmp_path / "b", "--log", "nonsense")
    assert code == 2 and "--log" in err
