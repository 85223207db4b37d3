"""The HTML report and a card opened as a person would: a real headless Chromium (Debian's
``chromium`` with its ``chromium-driver``, driven by Selenium), the network disabled.

Install what these tests need (they skip, saying so, without it):

    apt-get install -y chromium chromium-driver
    pip install "selenium>=4.20"     # in the dev extra
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from psystats.reports.card import build_card
from psystats.reports.card_html import render_card_html
from psystats.reports.content import build_report
from psystats.reports.html import write_html
from psystats.warehouse import db as warehouse_db
from report_fixture import add_floor, full_copy

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver; pip install 'selenium>=4.20'"
LOCAL = ("file:", "data:", "blob:", "about:")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed ({INSTALL})"
    for path in (CHROMIUM, DRIVER):
        if not Path(path).exists():
            return f"{path} not found: no browser to test in ({INSTALL})"
    return None


@pytest.fixture(scope="module")
def browser_factory():
    why = _missing()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start(scripts: bool = True):
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1200,1400",
            # No network: every request would go to a dead proxy, and the page is offline.
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
        ):
            o.add_argument(a)
        if not scripts:
            o.add_argument("--blink-settings=scriptEnabled=false")
        o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        d = webdriver.Chrome(service=Service(DRIVER), options=o)
        d.execute_cdp_cmd("Network.enable", {})
        d.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
        )
        drivers.append(d)
        return d

    yield start
    for d in drivers:
        d.quit()


@pytest.fixture(scope="module")
def files(small_warehouse: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser")
    db, _ = full_copy(small_warehouse, root)
    con = warehouse_db.open(db, "write", create=True)
    add_floor(con)
    con.close()
    con = warehouse_db.open(db)
    report = build_report(con, note="Fabricated example data")
    card = build_card(con, "Qwen3-0.6B-Instruct")
    con.close()
    try:
        html = write_html(report, root / "report.html")
        n_charts = sum(1 for f in report.figures() if f.chart)
    finally:
        report.close()
    card_path = root / "card.html"
    card_path.write_text(render_card_html(card), encoding="utf-8")
    (root / "n_charts").write_text(str(n_charts))
    return {"report": html, "card": card_path, "n_charts": root / "n_charts"}


def console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def requested(d) -> list[str]:
    urls = []
    for e in d.get_log("performance"):
        m = json.loads(e["message"])["message"]
        if m["method"] == "Network.requestWillBeSent":
            urls.append(m["params"]["request"]["url"])
    return urls


def nonblank(png: bytes) -> float:
    """Share of pixels that are not (near) white."""
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(np.mean(img < 235))


def wait_for(d, script: str, want, timeout: float = 60.0, *args):
    t0 = time.time()
    got = None
    while time.time() - t0 < timeout:
        got = d.execute_script(script, *args)
        if got == want:
            return got
        time.sleep(0.25)
    raise AssertionError(f"{script!r} gave {got!r}, wanted {want!r}")


def column(d, table, i: int) -> list[str]:
    return d.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).filter(r => !r.hidden)"
        ".map(r => r.cells[arguments[1]].textContent.trim())",
        table,
        i,
    )


def test_report_in_chromium(browser_factory, files):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from psystats.reports.blocks import SECTION_TITLES

    d = browser_factory()
    d.get(files["report"].as_uri())
    n_charts = int(files["n_charts"].read_text())
    # every interactive chart rendered (its static drawing then hides)
    wait_for(d, "return document.querySelectorAll('figure.live').length", n_charts)
    # every section is there, in order
    heads = [h.text for h in d.find_elements(By.CSS_SELECTOR, "section > h2")]
    assert heads == list(SECTION_TITLES)
    # sorting a table by a numeric column reorders it (ascending, then descending)
    table = next(
        t
        for t in d.find_elements(By.CSS_SELECTOR, "table.data")
        if "mean NLL" in [th.text for th in t.find_elements(By.TAG_NAME, "th")]
    )
    ths = table.find_elements(By.TAG_NAME, "th")
    i = [th.text for th in ths].index("mean NLL")
    before = [float(v) for v in column(d, table, i)]
    assert before != sorted(before)  # so sorting has something to do
    ths[i].click()
    assert [float(v) for v in column(d, table, i)] == sorted(before)
    ths[i].click()
    assert [float(v) for v in column(d, table, i)] == sorted(before, reverse=True)
    # typing in the filter box keeps only the matching rows
    box = d.execute_script("return arguments[0].previousElementSibling", table)
    assert box.get_attribute("class") == "filter"
    box.send_keys("Instruct")
    models = column(d, table, 0)
    assert models and all("Instruct" in m for m in models) and len(models) < len(before)
    # a figure renders: its screenshot is not blank
    chart = d.find_element(By.CSS_SELECTOR, "figure.live div.chart")
    d.execute_script("arguments[0].scrollIntoView()", chart)
    assert nonblank(chart.screenshot_as_png) > 0.02
    # clicking a legend entry keeps that series and dims the others
    size = d.find_element(By.CSS_SELECTOR, "section#section-2 div.chart")
    d.execute_script("arguments[0].scrollIntoView()", size)
    dimmed = "return arguments[0].querySelectorAll('[opacity=\"0.12\"]').length"
    assert d.execute_script(dimmed, size) == 0
    entry = size.find_elements(By.CSS_SELECTOR, ".role-legend-symbol path")[0]
    ActionChains(d).move_to_element(entry).click().perform()
    wait_for(d, dimmed.replace("return ", "return 0 < "), True, 10, size)
    # hovering a heatmap cell shows its values and interval
    heat = d.find_elements(By.CSS_SELECTOR, "section#section-3 .mark-rect path")
    ActionChains(d).move_to_element(heat[0]).perform()
    tip = wait_for(
        d,
        "const t = document.getElementById('vg-tooltip-element');"
        "return !!t && t.classList.contains('visible');",
        True,
        timeout=10,
    )
    assert tip
    text = d.find_element(By.ID, "vg-tooltip-element").text
    assert "pair" in text and "5%" in text and "95%" in text
    # offline, no console error, and nothing but the file itself was requested
    assert console_errors(d) == []
    assert all(u.startswith(LOCAL) for u in requested(d))


def test_report_with_scripts_off_shows_every_figure(browser_factory, files):
    from selenium.webdriver.common.by import By

    d = browser_factory(scripts=False)
    d.get(files["report"].as_uri())
    statics = d.find_elements(By.CSS_SELECTOR, "figure .static svg")
    assert statics and all(s.is_displayed() for s in statics)
    assert not d.find_elements(By.CSS_SELECTOR, "figure.live")
    assert nonblank(statics[0].screenshot_as_png) > 0.02
    assert all(u.startswith(LOCAL) for u in requested(d))


def test_card_in_chromium(browser_factory, files):
    from selenium.webdriver.common.by import By

    d = browser_factory()
    d.get(files["card"].as_uri())
    ids = [s.get_attribute("id") for s in d.find_elements(By.TAG_NAME, "section")]
    assert ids == ["caveats", "scored-on", "nll", "effects", "provenance"]
    assert "Human-fidelity card: Qwen3-0.6B-Instruct" in d.find_element(By.TAG_NAME, "h1").text
    assert "baseline:uniform" in d.find_element(By.ID, "nll").text
    assert nonblank(d.get_screenshot_as_png()) > 0.02
    assert console_errors(d) == []
    assert all(u.startswith(LOCAL) for u in requested(d))
