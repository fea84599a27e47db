"""The web page at `/` in a real headless browser (Debian's chromium + chromedriver, selenium):
a TTS with a registered voice and an enhancement of an uploaded file; the audio element must
hold a playable WAV."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.serve.conftest import wav_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

REQUIRED = os.environ.get("METIS_REQUIRE_BROWSER") == "1"  # .ci/run sets it where apt-get exists

pytestmark = [
    pytest.mark.slow,  # a browser start: ~5-15 s
    pytest.mark.skipif(
        (CHROMIUM is None or DRIVER is None) and not REQUIRED,
        reason="chromium / chromedriver not installed (.ci/run installs Debian's chromium chromium-driver)",
    ),
]

# the audio element's source, fetched back by the page: RIFF/WAVE header, and the element's duration
CHECK_AUDIO = """
const done = arguments[arguments.length - 1];
const player = document.getElementById('player');
const finish = async () => {
  const buf = await (await fetch(player.src)).arrayBuffer();
  const head = String.fromCharCode(...new Uint8Array(buf.slice(0, 12)));
  const error = player.error && player.error.code;
  done({head: head, bytes: buf.byteLength, duration: player.duration, error: error});
};
if (player.readyState >= 1) finish(); else player.addEventListener('loadedmetadata', finish, {once: true});
"""


@pytest.fixture
def browser():
    assert CHROMIUM and DRIVER, "METIS_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed"
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _run_and_check(driver, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 120).until(
        lambda d: (
            d.find_element(By.ID, "status").text in ("done",)
            or "error" in d.find_element(By.ID, "status").get_attribute("class")
        )
    )
    status = driver.find_element(By.ID, "status")
    assert status.text == "done", status.text
    WebDriverWait(driver, 10).until(EC.visibility_of_element_located((By.ID, "player")))
    audio = driver.execute_async_script(CHECK_AUDIO)
    assert audio["head"].startswith("RIFF") and audio["head"][8:12] == "WAVE", audio
    assert audio["bytes"] > 44 and audio["error"] is None
    assert audio["duration"] > 0.1, audio  # the browser decoded it: playable
    info = driver.find_element(By.ID, "info").text
    assert "seed 7" in info and "steps" in info
    link = driver.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("blob:")


def test_tts_and_enhancement_in_the_browser(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(served.url + "/")
    hint = browser.find_element(By.ID, "voice-hint")  # no key yet: a hint, not an empty list alone
    WebDriverWait(browser, 20).until(lambda d: hint.is_displayed())
    assert "API key" in hint.text
    formats = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "format")).options]
    assert sorted(formats) == sorted(["mp3", "opus", "aac", "flac", "wav", "pcm"])
    key = browser.find_element(By.ID, "apikey")
    key.send_keys(served.key)
    browser.execute_script("document.getElementById('apikey').dispatchEvent(new Event('change'))")
    WebDriverWait(browser, 20).until(lambda d: len(Select(d.find_element(By.ID, "voice")).options) > 1)
    assert "tts" in browser.find_element(By.ID, "served").text

    # TTS with the registered voice
    Select(browser.find_element(By.ID, "voice")).select_by_visible_text("alice (en, 3 s)")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Hi there.")
    browser.find_element(By.ID, "seed").send_keys("7")
    _run_and_check(browser, served)

    # enhancement of an uploaded file
    noisy = tmp_path / "noisy.wav"
    noisy.write_bytes(wav_bytes(1.5, 16_000, seed=3))
    Select(browser.find_element(By.ID, "task")).select_by_value("enhance")
    assert browser.find_element(By.ID, "slot-1").is_displayed()
    assert not browser.find_element(By.ID, "slot-2").is_displayed()
    browser.find_element(By.ID, "file-1").send_keys(str(noisy))
    _run_and_check(browser, served)

    # a service error is shown as its one-line message
    browser.find_element(By.ID, "steps").send_keys("99")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 30).until(
        lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class")
    )
    assert browser.find_element(By.ID, "status").text == "steps: must be <= 50 on this server (got 99)"
    # ... and the previous result's player, download link and seed line are gone
    assert not browser.find_element(By.ID, "player").is_displayed()
    assert not browser.find_element(By.ID, "download").is_displayed()
    assert browser.find_element(By.ID, "info").text == ""
    assert not browser.find_element(By.ID, "voice-hint").is_displayed()

    # a voice registered from the page is listed and selected
    prompt = tmp_path / "carol.wav"
    prompt.write_bytes(wav_bytes(3.0, 24_000, seed=11))
    browser.find_element(By.CSS_SELECTOR, "#register summary").click()
    browser.find_element(By.ID, "voice-file").send_keys(str(prompt))
    browser.find_element(By.ID, "voice-text").send_keys("A prompt text for carol.")
    browser.find_element(By.ID, "voice-name").send_keys("carol-page")
    browser.find_element(By.ID, "voice-add").click()
    WebDriverWait(browser, 30).until(lambda d: "registered" in d.find_element(By.ID, "voice-status").text)
    selected = Select(browser.find_element(By.ID, "voice")).first_selected_option.get_attribute("textContent")
    assert selected.startswith("carol-page")
    import httpx

    assert httpx.delete(served.url + "/v1/voices/carol-page", headers=served.auth).status_code == 200
