"""The studio page in real headless Chromium against the `shotstream-studio` server, checked by what the page
shows and by the mp4 it downloads (its frame count read back with ffmpeg).

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and selenium (the test extra).
Set SHOTSTREAM_STUDIO_SCREENSHOT=docs/studio.png to keep the mid-story screenshot for the README.
"""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from shotstream_jax.video_io import read_video

from .conftest import REPO, default_video

pytestmark = pytest.mark.heavy

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`shotstream-studio` (the default model) on a free port; stopped with SIGTERM afterwards."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "shotstream_jax.cli.studio", f"--port={port}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(url + "/api/info", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the studio did not start:\n" + (tmp_path / "server.log").read_text())
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # uvicorn shuts down cleanly on SIGTERM, then re-raises it: the exit status says "terminated".
    assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--hide-scrollbars"):
        opts.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script, timeout=180.0):
    """Poll a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{script} stayed falsy; page status: "
                       + driver.execute_script("return document.body.innerText"))


N = default_video()[0]    # frames per shot of the default model
ALL_DONE = "[...document.querySelectorAll('#shots .shot')].every(c => c.dataset.state === 'done')"


def cards(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('#shots .shot')].map(c => "
        "[c.dataset.state, c.querySelector('.prompt').textContent, !!c.querySelector('img')])")


def test_page_story_rewind_branch_download(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    d = browser
    d.get(server)
    wait_for(d, "window.studio && window.studio.info")
    d.find_element(By.ID, "caption").send_keys("A story about one character.")
    prompt = d.find_element(By.ID, "prompt")
    prompt.send_keys("wide shot of a red circle moving right on a blue background")
    d.find_element(By.ID, "add").click()
    wait_for(d, "window.studio.state && window.studio.state.shots.length === 1")
    prompt.send_keys("close-up of the same character standing still on a yellow background", Keys.ENTER)  # typed while shot 1 runs

    # Mid-story: shot 1 plays while shot 2 is being made (on a fresh server its first pass compiles).
    wait_for(d, f"window.studio.received[0] === {N} && window.studio.shown && window.studio.shown.n > 8")
    shot = tmp_path / "studio.png"
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("SHOTSTREAM_STUDIO_SCREENSHOT"):
        shutil.copy(shot, os.environ["SHOTSTREAM_STUDIO_SCREENSHOT"])

    # Frames arrive for both shots, the timeline shows both with a thumbnail, and the story plays.
    wait_for(d, f"window.studio.received[0] === {N} && window.studio.received[1] === {N}")
    wait_for(d, "document.querySelectorAll('#shots .shot img').length === 2 && " + ALL_DONE + " && "
                "[...document.querySelectorAll('#shots img')].every(i => i.complete && i.naturalWidth > 0)")
    assert cards(d) == [["done", "wide shot of a red circle moving right on a blue background", True],
                        ["done", "close-up of the same character standing still on a yellow background", True]]
    wait_for(d, "window.studio.shown && window.studio.shown.shot === 1 && window.studio.shown.n > 20")
    status = d.find_element(By.ID, "status").text
    assert status == "done · 2 shots" and "fps generated" in d.find_element(By.ID, "fps").text
    assert "playing shot 2" in d.find_element(By.ID, "playhead").text

    # Rewind to the first shot, then branch with a different second shot.
    d.find_elements(By.CSS_SELECTOR, "#shots .shot button.rewind")[0].click()
    wait_for(d, "document.querySelectorAll('#shots .shot').length === 1")
    assert 1 not in d.execute_script("return Object.keys(window.studio.received).map(Number)")
    assert d.find_element(By.ID, "notice").text == ""  # every word so far is in the model's vocabulary
    branch = "wide shot of the same character moving up on a green background at dusk"
    prompt.send_keys(branch, Keys.ENTER)
    wait_for(d, f"window.studio.received[1] === {N} && document.querySelectorAll('#shots .shot').length === 2 && "
                + ALL_DONE)
    assert cards(d) == [["done", "wide shot of a red circle moving right on a blue background", True],
                        ["done", branch, True]]
    assert d.find_element(By.ID, "error").text == ""
    # The Shapes model's vocabulary has neither word: the page names them; the shot was made all the same.
    assert d.find_element(By.ID, "notice").text == 'The model does not know "at", "dusk": it reads them as unknown words.'

    # A reload finds the tab's story again.
    d.refresh()
    wait_for(d, "document.querySelectorAll('#shots .shot img').length === 2 && " + ALL_DONE)
    assert cards(d)[1][1] == branch
    assert d.find_element(By.ID, "caption").get_attribute("value") == "A story about one character."

    # Download the story: the two shots' frames, as mp4.
    d.find_element(By.ID, "download").click()
    deadline = time.monotonic() + 60
    while not (mp4s := glob.glob(str(d.downloads / "*.mp4"))) or glob.glob(str(d.downloads / "*.crdownload")):
        assert time.monotonic() < deadline, os.listdir(d.downloads)
        time.sleep(0.2)
    frames, fps = read_video(mp4s[0])
    assert frames.shape[0] == 2 * N and fps == 16
