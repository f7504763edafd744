"""The published site: its rows, ranking and grouping, its exports, its refusals, its
determinism, and the page itself in a real (headless) Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_record, typed
from harness.core.errors import DDBenchError
from harness.core.io import write_json_atomic
from harness.report.site import exports, grids, plots
from harness.report.site.build import publish
from harness.report.site.rows import boards, leaderboard_rows, ranked_boards

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
    assert md.index("## Summary") < md.index("## digits, IPC 1") < md.index("## digits, IPC 10")
    summary = md.split("## Summary")[1].split("## digits")[0]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in summary.splitlines()
             if line.startswith("| ") and not line.startswith("| method")}
    assert list(cells)[0] == "random_real"  # baselines first
    # rat_bptt and tbptt (0.9, 0.7: a wide spread) share the first place: both bold, "=1"
    assert cells["rat_bptt"][0] == "=1 **82.00** (3 models, 2 seeds)"  # place, bold best, n
    assert cells["tbptt (suite unit)"][0] == "=1 **80.00** (2x1)"
    place = {r.name: r.place for r in rows if r.ipc == 1 and r.place}
    assert not place["random_real"].best and cells["random_real"][0] == f"{place['random_real'].text} 61.00 (2x1)"
    assert cells["rat_bptt"][1] == "95.00 (1x1)"  # alone in its group: no place, no bold
    assert cells["bptt"] == ["diverged", "-"]
    ipc1 = md.split("## digits, IPC 1")[1].split("## digits, IPC 10")[0]
    board = [[c.strip() for c in line.split("|")[1:-1]] for line in ipc1.splitlines()
             if line.startswith("| ") and "rank" not in line]
    assert [r[1] for r in board] == ["rat_bptt", "tbptt (suite unit)", "random_real", "tbptt (suite another)",
                                     "bptt"]
    assert [r[0] for r in board] == [r.place.text if r.place else "-" for r in boards(rows)[("digits", 1)]]
    assert board[0][2] == "**82.00 ± 1.63**" and "diverged" in board[-1][2]
    assert board[0][3].startswith("+21.00 vs best coreset (random_real), p ") and board[2][3] == "best coreset"
    tex = exports.latex(rows)
    assert tex.count(r"\toprule") == 3 and r"random\_real" in tex and r"$\pm$" in tex  # summary + two boards
    assert r"\textbf{82.00 $\pm$ 1.63}" in tex and r"1 \textbf{82.00}" in tex
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
    assets = re.findall(r'(?:src|<link[^>]*href)="([^"]+)"', html)
    assert assets and not any(a.startswith(("http:", "https:", "//")) for a in assets)  # every asset local
    assert 'href="https://arxiv.org/abs/2311.07025"' in html  # papers and code are links out, never assets
    again = tmp_path / "again"
    publish([SMOKE], again)
    for name in names:
        assert (again / name).read_bytes() == (smoke_site / name).read_bytes(), name


def test_the_index_opens_with_the_summary_and_fits_a_phone(smoke_site):
    html = (smoke_site / "index.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    first_table = re.search(r"<table class=\"([^\"]+)\"", html)
    assert first_table.group(1) == "summary" and html.index('id="summary"') < html.index('class="board"')
    assert html.count("<table") == html.count('<div class="scroll"><table')  # every table scrolls on its own
    assert html.index('id="how-to-read"') > 0 and "cpu_tensor_peak_sampled" in html and "LRS = " in html
    for heading in ("rank", "vs best coreset", "published", "re-evaluated", "commit"):
        assert f">{heading}" in html


def test_one_colour_per_method_in_every_figure(monkeypatch, tmp_path):
    """The same method is drawn in the same colour in the Pareto plot (both panels), the minutes
    plot, accuracy vs IPC and the hardness bars: its palette colour, or a hash of its name."""
    from matplotlib.colors import to_hex

    figures = {}
    monkeypatch.setattr(plots, "save", lambda fig, folder, name: figures.setdefault(name, fig) and f"{name}.png")
    hardness = {"config": {}, "buckets": [{"bucket": 0, "label": "easiest", "n": 5, "accuracy_mean": 0.5,
                                           "accuracy_std": 0.0, "accuracy_per_model": [0.5]}]}
    curve = {"config": {"every_minutes": 1.0}, "protocol": {"protocol": "standard"},
             "curve": [{"step": s, "seconds": 61.0 * s / 5, "accuracy_mean": 0.5, "accuracy_std": 0.0,
                        "accuracy_per_model": [0.5]} for s in (5, 10)]}
    minutes = {"outer_steps": 0, "minutes": 2.0}
    methods = ["random_real", "rat_bptt", "at_bptt", "my_method"]
    records = typed(
        [make_record(m, ipc=ipc, run_id=f"{m}{ipc}", outer_steps=0 if m == "random_real" else 10,
                     seconds_per_step=0.0 if m == "random_real" else 0.1 * (i + 1), accs=(0.5 + 0.01 * i,),
                     hardness=hardness) for i, m in enumerate(methods) for ipc in (1, 10)]
        + [make_record(m, dataset="mnist", run_id=f"{m}m", budget=minutes, anytime=curve, accs=(0.6,),
                       outer_steps=0 if m == "random_real" else 10) for m in methods])
    rows = leaderboard_rows(records)
    digits, mnist = [b for b in ranked_boards(rows) if b.ipc == 1]
    plots.pareto(digits.rows, digits.heading, tmp_path, "pareto")
    plots.budget_curves(mnist.rows, mnist.heading, tmp_path, "minutes", 2.0)
    plots.accuracy_vs_ipc(rows, "digits", tmp_path)
    plots.hardness(records, "digits", tmp_path)
    seen: dict[str, set[str]] = {}
    for name, fig in figures.items():
        for ax in fig.axes:
            for c in ax.collections:  # scatter points
                if c.get_label() in methods:
                    seen.setdefault(c.get_label(), set()).add(to_hex(c.get_facecolor()[0]))
            for c in ax.containers:  # error bars (lines) and bars
                if c.get_label() in methods:
                    artist = c.lines[0] if hasattr(c, "lines") else c.patches[0]
                    color = artist.get_color() if hasattr(artist, "get_color") else artist.get_facecolor()
                    seen.setdefault(c.get_label(), set()).add(to_hex(color))
    assert set(seen) == set(methods)
    for method, colors in seen.items():
        assert colors == {plots.method_color(method)}, method  # one colour everywhere, both panels included
    assert plots.method_color("rat_bptt") == plots.PALETTE["rat_bptt"]
    assert len({plots.method_color(m) for m in methods}) == len(methods)
    left = figures["minutes"].axes[0]
    assert "wall-clock (min" in left.get_xlabel() and left.get_xlim()[1] <= 2.0 * 1.05 + 1e-9  # the budget's axis
    code = "from harness.report.site.plots import method_color; print(method_color('my_method'))"
    hashed = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert hashed == {plots.method_color("my_method") + "\n"}  # never Python's salted hash


def test_grids_are_stretched_per_set_and_captioned(tmp_path, monkeypatch):
    """A set of low-contrast pixels (0.09-0.20, as MNIST IPC 1 from Gaussian init) is drawn black to white."""
    import matplotlib.axes
    import torch

    gen = torch.Generator().manual_seed(0)
    pixels = 0.09 + 0.11 * torch.rand(4, 1, 8, 8, generator=gen)
    torch.save({"images": pixels.clone(), "labels": torch.arange(2).repeat_interleave(2), "num_classes": 2,
                "ipc": 2, "pixels": pixels}, tmp_path / "set.pt")
    out, lo, hi = grids.stretched(pixels)
    assert lo == pytest.approx(float(torch.quantile(pixels.flatten().double(), 0.01)))
    assert hi == pytest.approx(float(torch.quantile(pixels.flatten().double(), 0.99)))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    drawn = []
    imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, img, **kw: drawn.append((img, kw)) or
                        imshow(ax, img, **kw))
    name, caption = grids.image_grid(tmp_path / "set.pt", ["a", "b"], tmp_path, "grid", title="mnist IPC 2: x s0")
    assert len(drawn) == 4 and all(kw["vmin"] == 0 and kw["vmax"] == 1 for _, kw in drawn)
    values = [float(v) for img, _ in drawn for v in img.flatten()]
    assert min(values) == 0.0 and max(values) == 1.0  # unstretched, they would span 0.09-0.20: nearly black
    assert "contrast stretched per set" in caption and f"{lo:.3g} to {hi:.3g}" in caption
    assert (tmp_path / name).is_file()


def _write_site_folder(folder: Path, method: str = "tbptt") -> None:
    git = {"commit": "abcdef1234567890", "dirty": True}
    write_json_atomic(folder / "base.json", make_record("random_real", run_id="base", outer_steps=0, accs=(0.4, 0.42),
                                                         provenance={"ddbench": "0.1", "git": {**git, "dirty": False}}))
    write_json_atomic(folder / "run.json", make_record(method, run_id="run1", accs=(0.6, 0.62),
                                                        provenance={"ddbench": "0.1", "git": git}))
    evaluation = {"schema_version": 2, "kind": "ddbench.eval", "eval_id": "ev1", "of_run": "run1",
                  "record_file": "run.json", "suite": "unit", "dataset": "digits", "ipc": 1, "method": method,
                  "seed": 0, "model": {"name": "resnet18"},
                  "eval": {"protocol": {"protocol": "ratbptt"}, "accuracy_mean": 0.7, "accuracy_std": 0.0,
                           "accuracy_per_model": [0.7, 0.7]},
                  "hardware": {"device_name": "Test CPU", "torch": "2.x", "torchopt": "0.7", "python": "3.11",
                               "cpu_count": 2},
                  "started_at": "2024-01-02T00:00:00+00:00", "finished_at": "2024-01-02T00:01:00+00:00"}
    write_json_atomic(folder / "run.eval-ev1.json", evaluation)


def test_reevaluations_provenance_and_margins_beside_the_run(tmp_path):
    _write_site_folder(tmp_path / "runs")
    done = publish([tmp_path / "runs"], tmp_path / "site")
    assert done["evaluations"] == 1
    html = (tmp_path / "site" / "index.html").read_text()
    board = html.split('class="leaderboard sortable"')[1]
    row = next(tr for tr in board.split("<tr") if 'data-value="tbptt"' in tr)
    assert "ratbptt on resnet18: 70.00 ± 0.00 (n 2)" in row  # the re-evaluation, beside the original
    assert "abcdef12" in row and 'class="dirty">dirty' in row and "2024-01-01" in row
    assert "+20.00 vs random_real" in row and 'href="https://arxiv.org/abs/1810.10667"' in row
    from harness.report.site.boards import references_html

    assert references_html("not_a_registered_method") == ""  # no guessed link for an unknown method
    base = next(tr for tr in board.split("<tr") if 'data-value="random_real"' in tr)
    assert "clean" in base and "best coreset" in base
    (page,) = [p for p in (tmp_path / "site" / "runs").glob("*tbptt*.html")]
    text = page.read_text()
    assert "Re-evaluations (ddbench eval)" in text and "resnet18" in text and "(dirty: uncommitted changes)" in text


def test_record_text_is_escaped_in_html_markdown_and_latex(tmp_path):
    label = "_a<b&c_d$"
    _write_site_folder(tmp_path / "runs", method=label)
    publish([tmp_path / "runs"], tmp_path / "site")
    site = tmp_path / "site"
    pages = [site / "index.html", *(site / "runs").glob("*.html")]
    assert all("a<b" not in page.read_text() for page in pages)
    assert sum("_a&lt;b&amp;c_d$" in page.read_text() for page in pages) == 2  # the index and the run's page
    md = (site / "leaderboard.md").read_text()
    # Markdown: HTML, emphasis and math ($, which GitHub renders as TeX) escaped; an intraword
    # underscore (c_d) is never emphasis, so it stays.
    assert "\\_a&lt;b&amp;c_d\\$" in md and "a<b" not in md and " _a" not in md
    assert exports.md_text("x|*y*") == "x\\|\\*y\\*"
    tex = (site / "leaderboard.tex").read_text()
    assert r"\_a\textless{}b\&c\_d\$" in tex and "a<b" not in tex and "c_d" not in tex


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


def _screenshot(browser, path: Path, width: int) -> None:
    """The whole page at ``width`` px (capped at 6000 px tall)."""
    browser.set_window_size(width, 1000)
    height = min(6000, browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(width, height)
    browser.save_screenshot(str(path))


@pytest.mark.slow
def test_the_page_in_a_real_browser(smoke_site, tmp_path):
    """Boards, sorting and images in Chromium; screenshots at 1400 px and 390 px (kept under
    $DDBENCH_ARTIFACTS when set); at 390 px the page itself never scrolls sideways: tables do."""
    from selenium.webdriver.common.by import By

    from harness.report import iter_records

    methods = {}
    for _, r in iter_records(SMOKE):
        methods.setdefault((r.dataset, r.ipc, r.label_kind), set()).add(r.method)  # one board per comparable group
    artifacts = Path(os.environ.get("DDBENCH_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    browser = _chromium()
    try:
        browser.get((smoke_site / "index.html").as_uri())
        first = browser.find_elements(By.TAG_NAME, "table")[0]
        assert "summary" in first.get_attribute("class") and first.is_displayed()
        summary_rows = [r.find_element(By.TAG_NAME, "th").text for r in first.find_elements(By.CSS_SELECTOR,
                                                                                           "tbody tr")]
        assert sorted(summary_rows) == sorted(set().union(*methods.values()))
        tables = browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")
        assert len(tables) == len(methods)
        for table, key in zip(tables, sorted(methods)):
            names = [row.find_elements(By.TAG_NAME, "td")[1].get_attribute("data-value")
                     for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
            assert sorted(names) == sorted(methods[key])  # one row per method of the smoke records
        images = browser.find_elements(By.TAG_NAME, "img")
        browser.execute_script("document.querySelectorAll('img').forEach(function (i) { i.loading = 'eager'; })")
        browser.set_window_size(1400, 20000)  # every lazy image in view, so that each loads
        assert images and all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                              for img in images)
        table = tables[0]
        before = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        table.find_elements(By.TAG_NAME, "th")[1].click()  # the method column
        after = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert sorted(after) == sorted(before) and after != before
        names = [r.find_elements(By.TAG_NAME, "td")[1].get_attribute("data-value")
                 for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert names == sorted(names)
        # The dataset filter hides the other datasets' boards (all digits here: nothing hidden).
        assert not browser.find_elements(By.CSS_SELECTOR, "section.board.hidden")
        browser.refresh()
        for width in (1400, 390):
            _screenshot(browser, artifacts / f"site-{width}.png", width)
            assert (artifacts / f"site-{width}.png").stat().st_size > 10_000
            page_width = browser.execute_script("return document.documentElement.scrollWidth")
            assert page_width <= width, f"the page scrolls sideways at {width} px"
            wide = browser.execute_script(
                "return Array.from(document.querySelectorAll('div.scroll')).some(d => d.scrollWidth > d.clientWidth)")
            assert wide or width > 390  # at 390 px the tables scroll inside their boxes
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
