"""The HTML leaderboard in a real headless browser (Debian's chromium, driven by selenium).

Needs: apt-get install -y chromium chromium-driver, and selenium (pip). Skips with the reason otherwise.
The screenshot is kept under pytest's tmp dir (path logged), and copied to $VLPROMPT_ARTIFACTS when set.
"""

import collections
import csv
import logging
import os
import shutil
from pathlib import Path

import pytest

from vlprompt.cli.leaderboard import leaderboard_main
from vlprompt.leaderboards.reported import load_reported

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]

_CHROME = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
_DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(_CHROME is None or _DRIVER is None,
                    reason="no chromium/chromedriver binary on PATH (apt-get install -y chromium chromium-driver)")
def test_html_leaderboard_in_headless_chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.common.by import By

    results = tmp_path / "results" / "base2new" / "toy"
    for d in ("toy_colors", "toy_patterns", "toy_places"):
        shutil.copytree(REPO / "leaderboards" / "results" / "base2new" / "toy" / d, results / d)
    out = tmp_path / "out"
    assert leaderboard_main(["build", str(tmp_path / "results"), "--out", str(out), "--html",
                             "--reported", str(REPO / "leaderboards" / "reported")]) == 0
    page = out / "base2new" / "toy" / "index.html"

    opts = webdriver.ChromeOptions()
    opts.binary_location = _CHROME
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=_DRIVER))
    try:
        driver.get(page.as_uri())
        # plots render: each plot div holds plotly's SVG
        for div in ("plot-scatter", "plot-bars"):
            svgs = driver.find_elements(By.CSS_SELECTOR, f"#{div} svg.main-svg")
            assert svgs, f"{div} did not render"
        assert driver.find_elements(By.CSS_SELECTOR, "#plot-scatter .scatterlayer .point")
        # tables hold the right rows: as many entrants per dataset as the built CSV, 3 reported rows
        with open(out / "base2new" / "toy" / "results.csv", newline="") as f:
            per_dataset = collections.Counter(row["dataset"] for row in csv.DictReader(f))
        assert sorted(per_dataset) == ["toy_colors", "toy_patterns", "toy_places"]
        for i, dataset in enumerate(sorted(per_dataset)):
            assert len(driver.find_elements(By.CSS_SELECTOR, f"#table-dataset-{i} tbody tr")) == per_dataset[dataset] >= 4
        n_reported = len(load_reported(REPO / "leaderboards" / "reported"))  # a toy page: the averages only
        assert len(driver.find_elements(By.CSS_SELECTOR, "#table-reported tbody tr.reported")) == n_reported
        # sorting works: click the HM header of the average table twice -> descending
        table = driver.find_element(By.ID, "table-average")
        hm_col = [th.text for th in table.find_elements(By.TAG_NAME, "th")].index("hm")
        th = table.find_elements(By.TAG_NAME, "th")[hm_col]
        th.click()
        th.click()
        vals = [float(r.find_elements(By.TAG_NAME, "td")[hm_col].text)
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert vals == sorted(vals, reverse=True)
        shot = tmp_path / "leaderboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        log.info("screenshot: %s", shot)
        keep = os.environ.get("VLPROMPT_ARTIFACTS")  # CI: keep the screenshot as an artifact
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "leaderboard_base2new_toy.png")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


@pytest.mark.skipif(_CHROME is None or _DRIVER is None,
                    reason="no chromium/chromedriver binary on PATH (apt-get install -y chromium chromium-driver)")
def test_segmentation_leaderboard_in_headless_chromium(tmp_path):
    """Dice bars render and every overlay of the gallery decodes (hand-made segmentation results, tests/seg_fixtures)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.common.by import By

    from seg_fixtures import write_seg_results

    write_seg_results(tmp_path / "results", tmp_path / "results" / "overlays")  # inside the results tree (issue 23)
    out = tmp_path / "out"
    assert leaderboard_main(["build", str(tmp_path / "results"), "--out", str(out), "--html", "--reported",
                             str(REPO / "leaderboards" / "reported")]) == 0
    page = out / "referring" / "seg-toy" / "index.html"
    opts = webdriver.ChromeOptions()
    opts.binary_location = _CHROME
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=_DRIVER))
    try:
        driver.get(page.as_uri())
        assert driver.find_elements(By.CSS_SELECTOR, "#plot-dice svg.main-svg"), "Dice bars did not render"
        bars = driver.find_elements(By.CSS_SELECTOR, "#plot-dice .barlayer .point")
        assert len(bars) == 4  # 2 learners x 2 datasets
        imgs = driver.find_elements(By.CSS_SELECTOR, ".gallery img")
        assert len(imgs) == 12
        sizes = [driver.execute_script("return [arguments[0].complete, arguments[0].naturalWidth];", im) for im in imgs]
        assert all(done and width == 48 for done, width in sizes), sizes
        assert len(driver.find_elements(By.CSS_SELECTOR, "#table-dataset-0 tbody tr")) == 2
        shot = tmp_path / "leaderboard_seg.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        log.info("screenshot: %s", shot)
        keep = os.environ.get("VLPROMPT_ARTIFACTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "leaderboard_referring_seg_toy.png")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


@pytest.mark.skipif(_CHROME is None or _DRIVER is None,
                    reason="no chromium/chromedriver binary on PATH (apt-get install -y chromium chromium-driver)")
def test_committed_page_with_shared_plotly_renders_from_file_url():
    """The committed pages load plotly.js from leaderboards/assets/ with a relative <script src>: it works from
    file:// (no server, no network)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.common.by import By

    page = REPO / "leaderboards" / "base2new" / "toy" / "index.html"
    opts = webdriver.ChromeOptions()
    opts.binary_location = _CHROME
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=_DRIVER))
    try:
        driver.get(page.as_uri())
        assert driver.execute_script("return typeof Plotly") == "object"
        for div in ("plot-scatter", "plot-bars"):
            assert driver.find_elements(By.CSS_SELECTOR, f"#{div} svg.main-svg"), f"{div} did not render"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
