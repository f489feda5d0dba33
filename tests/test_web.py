"""The web page in headless Chromium: sign in, submit 1CZY, wait, see the result.

Needs Debian's ``chromium`` and ``chromium-driver`` and 3Dmol.js from ``npm ci``; the
test skips when one is missing. A screenshot of the result page is kept in
``artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peptide_opt.api.app import STATIC_DIR
from tests.test_api import COMPLEX

pytestmark = pytest.mark.services

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Upper bound (s) for the small 1CZY job on a loaded two-core machine.
JOB_TIMEOUT_S = 900
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Without a GPU, WebGL for the 3D view runs on SwiftShader, and Chromium requires an
    # explicit opt-in to that fallback.
    "--enable-unsafe-swiftshader",
    "--window-size=1280,1800",
)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("chromium and chromium-driver are not installed")
    if not (STATIC_DIR / "vendor" / "3Dmol-min.js").is_file():
        pytest.skip("3Dmol.js is not installed: run 'npm ci' in the repository")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    try:
        yield driver
    finally:
        driver.quit()


def _sign_in(browser, server, user):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    browser.find_element(By.ID, "key").send_keys(user.key)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    WebDriverWait(browser, 30).until(
        ec.visibility_of_element_located((By.ID, "tasks-view"))
    )


def test_page_rejects_bad_key_and_cancels(browser, api_server, api_users):
    """Without a worker: a wrong key, a rejected form, then submit and cancel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(api_server.url)
    browser.find_element(By.ID, "key").send_keys("po_not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "invalid"))
    assert browser.find_element(By.ID, "sign-in-view").is_displayed()

    user = api_users("page-user")
    _sign_in(browser, api_server, user)
    form = browser.find_element(By.ID, "submit-form")
    form.find_element(By.ID, "receptor").send_keys(str(COMPLEX))
    form.find_element(By.ID, "peptide").send_keys("PQXQ")
    form.find_element(By.ID, "submit-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "Submission failed"))
    message = browser.find_element(By.ID, "message").text
    assert "'X' at position 3 is not one of the 20 standard amino acids" in message

    form.find_element(By.ID, "receptor").send_keys(str(COMPLEX))
    peptide = form.find_element(By.ID, "peptide")
    peptide.clear()
    peptide.send_keys("PQQATDD")
    form.find_element(By.ID, "submit-button").click()
    row = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#tasks-table tbody tr"))
    )
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "pending"
    row.find_element(By.TAG_NAME, "button").click()
    wait.until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#tasks-table tbody tr .status"), "cancelled"
        )
    )
    browser.save_screenshot(str(_artifact("web_cancelled.png")))


@pytest.mark.slow
def test_page_submits_and_shows_result(browser, api_server, api_users, api_worker):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    user = api_users("browser-user")
    worker = api_worker()
    wait = WebDriverWait(browser, 30)

    _sign_in(browser, api_server, user)
    assert browser.find_element(By.ID, "who").text == "browser-user"

    form = browser.find_element(By.ID, "submit-form")
    form.find_element(By.ID, "receptor").send_keys(str(COMPLEX))
    form.find_element(By.ID, "peptide").send_keys((COMPLEX.parent / "peptide.fasta").read_text())
    form.find_element(By.NAME, "n_poses").send_keys("2")
    form.find_element(By.NAME, "num_seq_per_target").send_keys("2")
    form.find_element(By.NAME, "site_chain").send_keys("B")
    form.find_element(By.ID, "submit-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "submitted"))
    row = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#tasks-table tbody tr"))
    )
    task_id = row.get_attribute("data-task-id")
    row.find_element(By.TAG_NAME, "a").click()

    long_wait = WebDriverWait(browser, JOB_TIMEOUT_S, poll_frequency=2)
    try:
        long_wait.until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, "#result-table tr td"))
        )
    except Exception:
        browser.save_screenshot(str(_artifact("web_result_timeout.png")))
        pytest.fail(f"task {task_id} showed no result:\n{worker.log_tail()}")
    # The 3D view draws after the complex file arrives.
    wait.until(
        lambda driver: driver.find_element(By.ID, "viewer").get_attribute("data-model")
    )

    result_rows = browser.find_elements(By.CSS_SELECTOR, "#result-table tr")
    # A header and one row per pose.
    assert len(result_rows) == 3
    assert "Docking result rank 1" in result_rows[1].text
    assert "PQQATDD" in result_rows[1].text
    points = browser.find_elements(By.CSS_SELECTOR, "#score-plot-svg circle")
    # 2 poses x at most 2 distinct designs each.
    assert 2 <= len(points) <= 4
    viewer = browser.find_element(By.ID, "viewer")
    assert viewer.get_attribute("data-model") == "complex1.pdb"
    # 3Dmol.js renders with WebGL off screen and shows the image through a bitmap
    # context, so the check is on pixels: a drawn molecule compresses far worse than
    # a blank canvas of the same size (about 600 kB against 37 kB of PNG here).
    drawn_bytes, blank_bytes = browser.execute_script(
        "const c = document.querySelector('#viewer canvas');"
        "const blank = document.createElement('canvas');"
        "blank.width = c.width; blank.height = c.height;"
        "return [c.toDataURL().length, blank.toDataURL().length];"
    )
    assert drawn_bytes > 3 * blank_bytes
    files = [link.text for link in browser.find_elements(By.CSS_SELECTOR, "#file-list a")]
    assert "result.csv" in files

    browser.execute_script("arguments[0].scrollIntoView()", viewer)
    browser.save_screenshot(str(_artifact("web_result.png")))
    errors = [
        entry for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
    ]
    assert errors == []


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
