"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) against a real fwpd training real language-model jobs.

Run by scripts/browser-test (make test runs it last)."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from fwp_client import Client, Unreachable  # noqa: E402

BIN = os.environ.get("FWP_BIN_DIR", os.path.join(ROOT, ".build", "release"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout=60, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Fwpd:
    """One fwpd on free loopback ports, restartable on the same ports and state."""

    def __init__(self):
        self.state = tempfile.mkdtemp(prefix="fwpd-browser-")
        self.req, self.pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc = None
        os.makedirs(os.path.join(self.state, "data"), exist_ok=True)
        self.text = os.path.join(self.state, "data", "text.txt")
        rng = random.Random(7)
        words = ("the fast weight programmer writes keys and values into a matrix that a slow net "
                 "reads with queries while the delta rule corrects what it stored before").split()
        with open(self.text, "w") as f:
            for _ in range(4000):
                f.write(" ".join(rng.choice(words) for _ in range(12)) + ".\n")

    def start(self):
        log = open(os.path.join(self.state, "log"), "a")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "fwpd"), "--state-dir", self.state, "--request-endpoint", self.req,
             "--publish-endpoint", self.pub, "--http-address", f"127.0.0.1:{self.http_port}",
             "--web-dir", os.path.join(ROOT, "web"), "--tasks-dir", os.path.join(ROOT, "tasks"),
             "--workers", "2", "--threads-per-job", "1"], stdout=log, stderr=log)
        self.client = Client(self.req, self.pub, timeout=0.3)
        wait_for("fwpd to answer", self._answers, timeout=30)
        wait_for("the dashboard to answer", lambda: self.get("/api/health") is not None, timeout=30)
        self.client.timeout = 10

    def _answers(self):
        try:
            return self.client.health()
        except Unreachable:
            return None

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(60)
        self.client.close()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def lm(self, steps, **extra):
        p = {"train": self.text, "level": "byte", "layers": 1, "model_size": 64, "heads": 2, "head_size": 32,
             "ff": 128, "batch": 8, "segment": 64, "steps": steps, "warmup": 10, "eval_every": 25,
             "eval_segments": 4, "lr": 0.003}
        p.update(extra)
        return self.client.submit(task="lm", parameters=p)["job"]["id"]

    def fwpctl(self, *args):
        out = subprocess.run([os.path.join(BIN, "fwpctl"), *args], check=True, capture_output=True, text=True,
                             env=dict(os.environ, FWPCTL_ENDPOINT=self.req, FWPCTL_EVENTS_ENDPOINT=self.pub))
        return out.stdout


@pytest.fixture(scope="module")
def fwpd():
    d = Fwpd()
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(a)
    driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                              options=options)
    yield driver
    driver.quit()


def js(browser, expression):
    return browser.execute_script("return " + expression)


def page_state(browser):
    return js(browser, "document.querySelector('#summary [data-state]') && "
                       "document.querySelector('#summary [data-state]').dataset.state")


def test_job_page_curve_grows_and_state_changes_live(fwpd, browser):
    job = fwpd.lm(400)
    browser.get(f"{fwpd.url}/job?id={job}")
    first = wait_for("the first points", lambda: js(browser, "window.fwpJob && window.fwpJob.points()"))
    wait_for("the curve to gain points while the job trains",
             lambda: js(browser, "window.fwpJob.points()") > first, timeout=60)
    assert page_state(browser) in ("queued", "running")
    label = wait_for("a progress bar", lambda: js(browser, "document.querySelector('#progress .label') && "
                                                           "document.querySelector('#progress .label').textContent"))
    wait_for("the progress to move", lambda: js(
        browser, "document.querySelector('#progress .label').textContent") != label, timeout=60)
    # a chart of the training loss, drawn by dygraphs
    assert browser.find_elements(By.CSS_SELECTOR, ".chart[data-group='loss'] canvas")
    wait_for("the page to show the job succeeded", lambda: page_state(browser) == "succeeded", timeout=180)
    status = fwpd.client.status(job)
    wait_for("the stream to deliver the last event",
             lambda: js(browser, "window.fwpJob.series.lastSeq") >= status["last_seq"])
    seqs = js(browser, "window.fwpJob.series.seqs")
    assert seqs == list(range(1, status["last_seq"] + 1)), "every stored event once, in order"
    assert js(browser, "window.fwpJob.series.duplicates") == 0
    steps = js(browser, "Array.from(window.fwpJob.series.series.get('eval loss').keys())")
    assert steps == [s for s in range(25, 401, 25)], "one eval point per evaluation"


def test_reconnects_resume_without_missing_or_repeating(fwpd, browser):
    job = fwpd.lm(100000)
    browser.get(f"{fwpd.url}/job?id={job}")
    wait_for("points", lambda: js(browser, "window.fwpJob && window.fwpJob.points() > 5"))
    for _ in range(3):  # the page opens a new stream after what it has
        js(browser, "window.fwpJob.reconnect() || true")
        time.sleep(0.7)
    # fwpd itself goes away and comes back: the browser's EventSource reconnects by itself,
    # sending the last event id it saw
    before = js(browser, "window.fwpJob.series.lastSeq")
    fwpd.stop()
    fwpd.start()
    wait_for("events after the restart", lambda: js(browser, "window.fwpJob.series.lastSeq") > before + 5, timeout=90)
    fwpd.client.cancel(job)
    wait_for("the page to show the job cancelled", lambda: page_state(browser) == "cancelled", timeout=60)
    last = fwpd.client.status(job)["last_seq"]
    wait_for("the stream to deliver the last event", lambda: js(browser, "window.fwpJob.series.lastSeq") >= last)
    seqs = js(browser, "window.fwpJob.series.seqs")
    assert seqs == list(range(1, last + 1)), "no event missed or repeated"
    assert js(browser, "window.fwpJob.series.duplicates") == 0, "the server never sent an event twice"
    kinds = [e["state"] for e in fwpd.client.events(job) if e["kind"] == "state"]
    assert "queued" in kinds[1:], "the restart requeued the job, and it ran again"


def test_cancel_from_the_page(fwpd, browser):
    job = fwpd.lm(100000)
    browser.get(f"{fwpd.url}/job?id={job}")
    wait_for("the job to run", lambda: page_state(browser) == "running", timeout=60)
    wait_for("the cancel button", lambda: browser.find_element(By.ID, "cancel").is_displayed())
    browser.find_element(By.ID, "cancel").click()
    wait_for("the page to show the job cancelled", lambda: page_state(browser) == "cancelled", timeout=60)
    assert fwpd.client.status(job)["state"] == "cancelled"


def test_a_viewer_cannot_cancel(fwpd, browser):
    job = fwpd.lm(100000)
    token = json.loads(fwpd.fwpctl("token", "--role", "viewer", "--json"))["token"]
    try:
        browser.get(f"{fwpd.url}/login?token={token}")
        wait_for("the jobs page as a viewer", lambda: "(viewer)" in js(
            browser, "document.querySelector('header .who') && document.querySelector('header .who').textContent"))
        browser.get(f"{fwpd.url}/job?id={job}")
        wait_for("the job to run", lambda: page_state(browser) == "running", timeout=60)
        assert not browser.find_element(By.ID, "cancel").is_displayed(), "no cancel button for a viewer"
        # the page's own request, made anyway, is refused by the server
        refusal = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"fwp.post('/api/jobs/{job}/cancel').then(() => done('accepted'), (e) => done(e.status + ' ' + e.message));")
        assert refusal.startswith("403 ") and "role" in refusal
        time.sleep(1)
        assert fwpd.client.status(job)["state"] == "running", "the server refused, not only the page"
        assert not fwpd.client.status(job)["cancel_requested"]
    finally:
        browser.delete_all_cookies()
        fwpd.client.cancel(job)


def test_jobs_and_sweep_pages(fwpd, browser):
    sweep = fwpd.client.sweep(
        task="retrieval",
        parameters={"key_size": 8, "max_steps": 60, "eval_every": 20, "target_loss": 0, "batch": 8},
        grid={"keys": [4, 8, 12], "attention": ["linear", "dpfp-1"]}, seeds=1)["sweep"]["id"]
    browser.get(fwpd.url + "/")
    wait_for("the jobs table", lambda: js(browser, "document.querySelectorAll('#jobs tbody tr').length") >= 6)
    wait_for("the sweep in the sweeps table", lambda: js(
        browser, f"Array.from(document.querySelectorAll('#sweeps a')).some(a => a.textContent === '#{sweep}')"))
    browser.get(f"{fwpd.url}/sweep?id={sweep}")
    wait_for("the sweep's plot with a series per attention", lambda: js(
        browser, "window.fwpSweep && window.fwpSweep.plotted()") == 3, timeout=120)
    assert js(browser, "window.fwpSweep.labels()") == ["keys", "attention=dpfp-1", "attention=linear"]
    assert "attention=linear" in js(browser, "document.getElementById('legend').textContent")
    assert js(browser, "document.querySelectorAll('#points tbody tr').length") == 6
    jobs = [p["job"] for p in fwpd.client.sweep_status(sweep)["points"]][:2]
    browser.get(f"{fwpd.url}/compare?jobs={jobs[0]},{jobs[1]}")
    wait_for("two jobs' losses overlaid", lambda: js(
        browser, "window.fwpCompare && window.fwpCompare.charts.has('loss') && "
                 "window.fwpCompare.charts.get('loss').labels.split(',').length") == 4, timeout=60)
