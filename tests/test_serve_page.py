"""The page `lightbert serve` shows at `/`, driven in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium; nothing is downloaded): type a text, press the button, read the answer."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PHONE = (390, 844)  # a phone's CSS width and height


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no browser here: apt-get install chromium chromium-driver (as .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={PHONE[0]},{PHONE[1]}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    # A window cannot be narrower than ~500 px: emulate the phone's screen, as the browser's device mode does.
    metrics = {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    yield driver
    driver.quit()


def wait_for(driver, element_id: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(expected_conditions.visibility_of_element_located((By.ID, element_id)))


def test_the_page_labels_a_typed_text_with_a_bar_per_label(browser, server, classifier, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait_for(browser, "model-name")
    assert "single-label" in browser.find_element(By.ID, "model-meta").text  # filled from /info
    browser.find_element(By.ID, "text").send_keys("a lovely, superb film")
    browser.find_element(By.ID, "predict").click()
    label = wait_for(browser, "result").find_element(By.ID, "label").text
    browser.save_screenshot(str(tmp_path / "page.png"))

    expected = classifier.predict(["a lovely, superb film"])[0]
    assert label.startswith(expected["label"]) and f"{expected['score'] * 100:.1f}%" in label
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    shown = {bar.get_attribute("data-label"): float(bar.get_attribute("data-prob")) for bar in bars}
    assert shown.keys() == expected["probs"].keys()
    assert all(abs(shown[name] - p) < 1e-6 for name, p in expected["probs"].items())
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_the_page_fits_a_phone_width_screen(browser, server):
    browser.get(server.url + "/")
    wait_for(browser, "model-name")
    assert browser.execute_script("return window.innerWidth") == PHONE[0]
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]  # no sideways scroll


def test_the_page_shows_the_servers_error(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait_for(browser, "model-name")
    box = browser.find_element(By.ID, "text")
    browser.execute_script("arguments[0].value = arguments[1];", box, "word " * 1000)  # over --max_body_bytes
    browser.find_element(By.ID, "predict").click()
    assert "over 4096 bytes" in wait_for(browser, "error").text
