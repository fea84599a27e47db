"""The web page at `/` in a real headless browser (Debian's chromium + chromedriver, selenium):
a TTS with a registered voice, streamed and not, and an enhancement of an uploaded file; the
audio element must hold a playable WAV."""

from __future__ import annotations

import base64
import io
import os
import shutil

import httpx
import numpy as np
import pytest
import soundfile as sf

from metis_cli.text import sentences
from tests.serve.conftest import STREAM_TEXT, STREAM_WAIT, Gate, stream_server, wav_bytes

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

# the audio element's source as base64
PLAYER_BYTES = """
const done = arguments[arguments.length - 1];
fetch(document.getElementById('player').src).then((r) => r.blob()).then((blob) => {
  const reader = new FileReader();
  reader.onload = () => done(reader.result.split(',')[1]);
  reader.readAsDataURL(blob);
});
"""

# the page's stream player fed 4801 known samples in reads of odd sizes (samples split between
# reads), rendered by an OfflineAudioContext at 24 kHz: the buffers must play back to back, exactly
ODD_READS = """
const done = arguments[arguments.length - 1];
const n = 4801, lead = 1200;  // the first buffer starts 0.05 s ahead
const pcm = new Int16Array(n);
for (let i = 0; i < n; i++) pcm[i] = ((i * 7919) % 65536) - 32768;
const bytes = new Uint8Array(pcm.buffer);
const sizes = [1, 3, 2, 5, 1, 1, 1001, 7, 4];
let reads = 0;
const body = new ReadableStream({start(c) {
  for (let at = 0, k = 0; at < bytes.length; k++) {
    const m = sizes[k % sizes.length];
    c.enqueue(bytes.slice(at, at + m));
    at += m;
    reads++;
  }
  c.close();
}});
stopPlayback();
const ctx = new OfflineAudioContext(1, n + 2 * lead, 24000);
const stats = {chunks: 0, bytes: 0, firstAudioMs: null, doneMs: null, scheduled: 0};
playStream(new Response(body), ctx, stats, performance.now()).then(async (parts) => {
  const out = (await ctx.startRendering()).getChannelData(0);
  let err = 0, outside = 0;
  for (let i = 0; i < out.length; i++) {
    const want = i >= lead && i < lead + n ? pcm[i - lead] / 32768 : 0;
    if (want === 0) outside = Math.max(outside, Math.abs(out[i]));
    err = Math.max(err, Math.abs(out[i] - want));
  }
  stopPlayback();
  done({reads: reads, stats: stats, parts: parts.length, err: err, outside: outside});
}, (e) => done({error: String(e)}));
"""

TEXT = STREAM_TEXT
WAIT = STREAM_WAIT


@pytest.fixture(scope="module")
def stream_served(tiny_bundle, tmp_path_factory):
    """A TTS server whose texts are spoken in pieces of at most 40 characters (see STREAM_TEXT)."""
    folder = tmp_path_factory.mktemp("web-stream")
    served, thread = stream_server(tiny_bundle, folder)
    yield served
    thread.stop()


@pytest.fixture
def browser():
    assert CHROMIUM and DRIVER, "METIS_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed"
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",  # the streamed TTS's AudioContext plays at once
    ):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _finished(driver) -> bool:
    from selenium.webdriver.common.by import By

    status = driver.find_element(By.ID, "status")
    return status.text == "done" or "error" in status.get_attribute("class")


def _stream_stats(driver) -> dict:
    return driver.execute_script("return window.metisStream") or {}


def _run_and_check(driver, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, WAIT).until(_finished)
    _check_result(driver)


def _check_result(driver):
    """Status "done", a playable WAV in the player, the seed line, the download link."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

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


def _result_cleared(driver) -> None:
    from selenium.webdriver.common.by import By

    assert not driver.find_element(By.ID, "player").is_displayed()
    assert not driver.find_element(By.ID, "download").is_displayed()
    assert driver.find_element(By.ID, "info").text == ""


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

    # TTS with the registered voice, not streamed: the file in the chosen format
    Select(browser.find_element(By.ID, "voice")).select_by_visible_text("alice (en, 3 s)")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Hi there.")
    browser.find_element(By.ID, "seed").send_keys("7")
    stream = browser.find_element(By.ID, "stream")
    assert stream.is_displayed() and stream.is_selected()  # on by default for TTS
    stream.click()
    assert browser.find_element(By.ID, "format").is_enabled()
    _run_and_check(browser, served)
    assert _stream_stats(browser)["chunks"] == 0

    # enhancement of an uploaded file
    noisy = tmp_path / "noisy.wav"
    noisy.write_bytes(wav_bytes(1.5, 16_000, seed=3))
    Select(browser.find_element(By.ID, "task")).select_by_value("enhance")
    assert not browser.find_element(By.ID, "stream").is_displayed()  # TTS only
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
    _result_cleared(browser)  # ... and the previous result's player, download link and seed line are gone
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


def test_a_streamed_tts_plays_as_it_arrives_and_keeps_the_same_samples(stream_served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    served = stream_served
    pieces = sentences.stream_pieces(TEXT, 40)
    assert pieces == sentences.split_text(TEXT, 40) and len(pieces) == 3
    body = {"model": "tts-1", "input": TEXT, "voice": "alice", "response_format": "pcm", "seed": 7}
    whole = httpx.post(served.url + "/v1/audio/speech", json=body, headers=served.auth, timeout=WAIT)
    assert whole.status_code == 200 and whole.headers["x-metis-chunks"] == "3"  # the long-text path

    browser.get(served.url + "/")
    browser.find_element(By.ID, "apikey").send_keys(served.key)
    browser.execute_script("document.getElementById('apikey').dispatchEvent(new Event('change'))")
    WebDriverWait(browser, 20).until(lambda d: len(Select(d.find_element(By.ID, "voice")).options) > 1)
    Select(browser.find_element(By.ID, "voice")).select_by_visible_text("alice (en, 3 s)")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys(TEXT)
    browser.find_element(By.ID, "seed").send_keys("7")
    assert browser.find_element(By.ID, "stream").is_selected()
    assert not browser.find_element(By.ID, "format").is_enabled()  # a stream is kept as a WAV

    def arrived(d) -> bool:
        return _stream_stats(d).get("chunks", 0) >= 1 or _finished(d)

    with Gate(served, WAIT) as gate:  # the pieces after the first wait for gate.open()
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, WAIT).until(arrived)
        early = _stream_stats(browser)
        # the first sentence is scheduled for playback while the last one has not been made
        assert early["scheduled"] >= 1 and early["firstAudioMs"] > 0, early
        assert pieces[-1] not in gate.started
        assert browser.find_element(By.ID, "status").text == "streaming..."
        gate.open()
        WebDriverWait(browser, WAIT).until(_finished)
    _check_result(browser)
    stats = _stream_stats(browser)
    assert stats["chunks"] >= 2 and stats["scheduled"] >= 2, stats
    assert stats["bytes"] == len(whole.content), stats
    assert 0 < stats["firstAudioMs"] < stats["doneMs"], stats
    # the WAV holds the stream's samples: those of the same request not streamed (the text spoken
    # in the same pieces, as test_streaming compares them)
    wav = base64.b64decode(browser.execute_async_script(PLAYER_BYTES))
    assert len(wav) == 44 + len(whole.content) and wav[44:] == whole.content
    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24_000 and np.array_equal(samples, np.frombuffer(whole.content, "<i2"))
    assert "streamed: 3 piece(s)" in browser.find_element(By.ID, "info").text
    assert browser.find_element(By.ID, "download").get_attribute("download") == "metis-tts.wav"

    # samples split between reads are joined; the buffers play back to back, no gap, no overlap
    odd = browser.execute_async_script(ODD_READS)
    assert "error" not in odd, odd
    assert odd["stats"]["chunks"] == odd["parts"] == odd["reads"] and odd["stats"]["bytes"] == 2 * 4801
    assert 2 <= odd["stats"]["scheduled"] < odd["reads"]  # the lone bytes were held, not played
    assert odd["err"] < 1e-4 and odd["outside"] == 0, odd

    # a stream cut short (a model error after the first sentence): the error, nothing kept
    with Gate(served, WAIT, fail=True) as gate:
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, WAIT).until(arrived)
        assert _stream_stats(browser)["scheduled"] >= 1
        gate.open()
        WebDriverWait(browser, WAIT).until(_finished)
    status = browser.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class") and status.text.startswith("request failed"), status.text
    _result_cleared(browser)

    # a refusal before the stream: its one-line message
    browser.find_element(By.ID, "steps").send_keys("99")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, WAIT).until(_finished)
    assert browser.find_element(By.ID, "status").text == "steps: must be <= 50 on this server (got 99)"
    assert _stream_stats(browser)["chunks"] == 0
    _result_cleared(browser)
