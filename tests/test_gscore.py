"""GScore against a real HTTP server on 127.0.0.1 that answers like a judge.

The fake judge (:class:`FakeJudge`, a ``ThreadingHTTPServer`` speaking the
OpenAI chat completions protocol) decodes every image it is sent and scores a
result by its content: each method's ``edited.png`` is a flat colour whose red
channel is 25 x its expected score, so a score that comes back to the wrong
method is seen. It also favours whatever is shown as "Result A" by one point
(a position bias), so the test can check the shuffled orders recorded in the
report against what the server saw. It can be scripted per request to answer
malformed text, 400, 422, 429, 500 or 503, to echo the Authorization header, or to hang.

Result folders are tiny PNGs written here; no model is loaded.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from gooddrag.benchmark import gscore as G
from gooddrag.benchmark import register_commands, run_command
from gooddrag.errors import GoodDragError

KEY = "sk-test-7f3a9c1e-do-not-write-me"
ORIGINAL_RED = 0


# ----------------------------------------------------------------- the fake judge
class FakeJudge(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.script: list[str] = []  # behaviour of the next requests, then "judge"
        self.requests: list[dict] = []  # every request received: body, key, auth
        self.answered: list[int] = []  # indices of the requests answered with a judgement
        self.hang_from: int | None = None  # requests from this index on wait for `release`
        self.release = threading.Event()
        self.in_flight = self.most_in_flight = 0
        self.delay = 0.0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self):
        self.release.set()
        self.shutdown()
        self.server_close()


def decode_image(url: str) -> tuple[bytes, int]:
    assert url.startswith("data:image/png;base64,"), url[:40]
    data = base64.b64decode(url.split(",", 1)[1])
    return data, Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))[0]


def read_request(body: dict) -> dict:
    """What the judge sees: the prompt, the original's red value, {label: red} and the images' sha256."""
    parts = body["messages"][0]["content"]
    seen = {"prompt": parts[0]["text"], "results": {}, "sha256": []}
    label = None
    for part in parts[1:]:
        if part["type"] == "text":
            label = part["text"].removeprefix("Result ").rstrip(":") if part["text"].startswith("Result ") else "orig"
        else:
            data, red = decode_image(part["image_url"]["url"])
            seen["sha256"].append(hashlib.sha256(data).hexdigest())
            if label == "orig":
                seen["original"] = red
            else:
                seen["results"][label] = red
    return seen


class Handler(BaseHTTPRequestHandler):
    server: FakeJudge

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload, headers=()):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client is gone (killed)
            pass

    def _reply(self, content: str):
        self._send(200, {"id": "x", "object": "chat.completion", "model": "fake",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]})

    def do_POST(self):
        srv = self.server
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        path, _, query = self.path.partition("?")
        if path != "/v1/chat/completions":
            return self._send(404, {"error": "no such route"})
        body = json.loads(raw)
        auth = self.headers.get("Authorization")
        with srv.lock:
            index = len(srv.requests)
            srv.requests.append({"body": body, "key": hashlib.sha256(raw).hexdigest(), "auth": auth, "query": query})
            what = srv.script.pop(0) if srv.script else "judge"
            srv.in_flight += 1
            srv.most_in_flight = max(srv.most_in_flight, srv.in_flight)
        try:
            time.sleep(srv.delay)
            if srv.hang_from is not None and index >= srv.hang_from:
                srv.release.wait(30)
                return self._send(503, {"error": "went away"})
            if what in ("429", "500", "503"):
                return self._send(int(what), {"error": f"busy; auth was {auth}"}, [("Retry-After", "0")])
            if what == "malformed":
                return self._reply("The first result looks good, I would give it 8/10.")
            if what == "echo-auth":
                return self._reply(f"Your header was {auth}; no JSON today.")
            if what == "401":
                return self._send(401, {"error": "bad key"})
            if what == "400":  # as vLLM words a parameter it does not take
                return self._send(400, {"object": "error", "type": "BadRequestError", "code": 400,
                                        "message": f"top_k is not supported by this endpoint\n(auth was {auth})"})
            if what == "422":  # FastAPI's validation error, longer than a line
                return self._send(422, {"detail": [{"loc": ["body", "max_tokens"], "msg": "x" * 500}]})
            seen = read_request(body)
            scores = {lab: min(10, red // 25 + (lab == "A")) for lab, red in seen["results"].items()}
            text = json.dumps({"scores": scores, "explanation": {lab: "fine" for lab in scores}})
            with srv.lock:
                srv.answered.append(index)
            self._reply(f"```json\n{text}\n```" if what == "fenced" else text)
        finally:
            with srv.lock:
                srv.in_flight -= 1


@pytest.fixture
def judge_server():
    srv = FakeJudge()
    yield srv
    srv.stop()


# ------------------------------------------------------------------ result folders
SAMPLES = ("cat_1", "cat_2", "dog_1")


def flat(red: int, size=(32, 24)) -> Image.Image:
    return Image.new("RGB", size, (red, 90, 160))


def write_run(root: Path, method: str, scores: dict[str, int]) -> Path:
    """A results folder as `bench run` writes it, one flat-colour edited.png per sample (red = 25 x score)."""
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"method": method, "model": {"model": "tiny"}}))
    for sample, score in scores.items():
        d = root / sample
        d.mkdir()
        flat(ORIGINAL_RED).save(d / "input.png")
        flat(25 * score).save(d / "edited.png")
        (d / "run.json").write_text(json.dumps({"inputs": {"prompt": "a photo"}, "timings_s": {"total": 1.0}}))
        (d / "new_points.json").write_text(json.dumps(
            {"handle_points": [[5, 5]], "target_points": [[9, 5]], "new_handle_points": [[8, 5]]}))
    return root


BASES = {"alpha": {"cat_1": 3, "cat_2": 5, "dog_1": 7},
         "beta": {"cat_1": 6, "cat_2": 2, "dog_1": 4},
         "gamma": {"cat_1": 8, "cat_2": 8, "dog_1": 1}}


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    return {m: write_run(tmp_path / f"run-{m}", m, s) for m, s in BASES.items()}


def bench(*argv) -> int:
    parser = argparse.ArgumentParser(prog="gooddrag bench")
    register_commands(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args([str(a) for a in argv])
    args.argv = ["bench", *map(str, argv)]
    return run_command(args, say=lambda *a: None)


def judge_args(srv: FakeJudge, *extra) -> list:
    return ["--metrics", "gscore", "--judge-url", srv.url, "--judge-model", "fake-vlm", "--no-progress",
            "--judge-backoff", "0.001", *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    for var in (G.KEY_ENV, G.FALLBACK_KEY_ENV):
        monkeypatch.delenv(var, raising=False)


# ------------------------------------------------------------------------ tests
def seen_order(seen: dict, methods=tuple(BASES)) -> tuple[str, list[str]]:
    """(sample, methods by label) of a request judging ``methods``, from the colours the server decoded
    (each sample's set of colours is its own)."""
    reds = sorted(seen["results"].values())
    [sample] = [s for s in SAMPLES if sorted(25 * BASES[m][s] for m in methods) == reds]
    by_red = {25 * BASES[m][sample]: m for m in methods}
    return sample, [by_red[seen["results"][lab]] for lab in sorted(seen["results"])]


def as_key(sample_order) -> tuple:
    return sample_order[0], tuple(sample_order[1])


def test_the_request_carries_the_prompt_every_image_and_the_settings(judge_server, runs, monkeypatch):
    monkeypatch.setenv(G.KEY_ENV, KEY)
    rc = bench("eval", runs["alpha"], runs["beta"], runs["gamma"], "--judge-repeats", "1",
               *judge_args(judge_server, "--judge-top-k", "32"))
    assert rc == 0
    assert len(judge_server.requests) == 3  # 3 samples x 1 repetition
    samples = []
    for req in judge_server.requests:
        body = req["body"]
        assert req["auth"] == f"Bearer {KEY}"
        assert body["model"] == "fake-vlm"
        assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (0.4, 1.0, 32, 2048)
        seen = read_request(body)
        assert seen["prompt"] == G.render_prompt(G.DEFAULT_PROMPT, ["A", "B", "C"])
        assert "A, B and C" in seen["prompt"] and "$" not in seen["prompt"]
        assert seen["original"] == ORIGINAL_RED and sorted(seen["results"]) == ["A", "B", "C"]
        # every image byte for byte: the original, then each method's edited.png, in the order shown
        sample, order = seen_order(seen)
        samples.append(sample)
        want = [(runs["alpha"] / sample / "input.png").read_bytes()] + [
            (runs[m] / sample / "edited.png").read_bytes() for m in order]
        assert seen["sha256"] == [hashlib.sha256(b).hexdigest() for b in want]
    assert sorted(samples) == list(SAMPLES)


def test_shuffled_orders_map_scores_back_to_the_right_method(judge_server, runs):
    repeats = 6
    # the command-line order of the folders does not matter: methods are sorted by name before shuffling, and
    # the report goes to the folder whose path sorts first (run-alpha), not to the first one given
    assert bench("eval", runs["gamma"], runs["alpha"], runs["beta"], *judge_args(
        judge_server, "--judge-repeats", repeats, "--judge-seed", "5")) == 0
    out = runs["alpha"] / "eval" / "joint"
    records = jsonl(out / "gscore.jsonl")
    assert len(records) == len(judge_server.requests) == 3 * repeats
    for rec in records:
        assert rec["order"] == G.shuffled_order(BASES, 5, rec["sample"], rec["rep"])
    # what the server saw (which method's image sat under which label) is what the report recorded
    seen = sorted(seen_order(read_request(req["body"])) for req in judge_server.requests)
    assert seen == sorted((r["sample"], r["order"]) for r in records)
    assert len({(s, tuple(o)) for s, o in seen}) > 3  # the order really changes between repetitions
    # each method's score: its base score, plus 1 in the repetitions where it was shown as "A"
    rows = {(r["method"], r["sample"]): r for r in read_csv(out / "metrics.csv")}
    for method, bases in BASES.items():
        for sample, base in bases.items():
            ratings = [base + (r["order"][0] == method) for r in records if r["sample"] == sample]
            assert [r["scores"][method] for r in records if r["sample"] == sample] == ratings
            assert float(rows[(method, sample)]["gscore"]) == pytest.approx(sum(ratings) / repeats)
            assert int(rows[(method, sample)]["gscore_n"]) == repeats
            assert float(rows[(method, sample)]["gscore_sd"]) == pytest.approx(G.pooled_sd(ratings))
    assert any(float(r["gscore"]) != BASES[m][s] for (m, s), r in rows.items())  # the bias is seen ...
    assert all(float(r["gscore"]) - BASES[m][s] < 1 for (m, s), r in rows.items())  # ... and shared out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["info"]["gscore"]["orders"]["cat_1"] == [G.shuffled_order(BASES, 5, "cat_1", k)
                                                           for k in range(repeats)]
    alpha = summary["summary"]["alpha"]
    assert alpha["mean"]["gscore"] == pytest.approx(sum(float(rows[("alpha", s)]["gscore"]) for s in SAMPLES) / 3)
    assert alpha["categories"]["cat"]["samples"] == 2
    assert [G.shuffled_order(BASES, 6, "cat_1", k) for k in range(repeats)] != \
        [G.shuffled_order(BASES, 5, "cat_1", k) for k in range(repeats)]  # another seed, other orders


def test_a_malformed_reply_is_asked_again_then_counted_missing(judge_server, runs):
    run = runs["alpha"]
    # one sample, two repetitions, one at a time: rep 0 never parses, rep 1 parses at its second try
    judge_server.script = ["malformed", "echo-auth", "malformed", "malformed", "fenced"]
    rc = bench("eval", f"{run}/cat_1", "--judge-repeats", "2", "--judge-concurrency", "1",
               *judge_args(judge_server))
    assert rc == 0  # unparsable is a final answer: nothing to run again
    assert len(judge_server.requests) == 5  # 1 + 2 retries for rep 0, 2 for rep 1
    retry = judge_server.requests[1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert retry[1]["content"] == "The first result looks good, I would give it 8/10."
    assert "only the JSON object" in retry[2]["content"]
    out = run / "cat_1" / "eval"
    row = read_csv(out / "metrics.csv")[0]
    assert (row["gscore"], row["gscore_n"], row["gscore_missing"]) == ("4.0", "1", "1")  # 3, +1 as "A"
    info = json.loads((out / "summary.json").read_text())["info"]["gscore"]
    assert (info["missing_malformed"], info["missing_unavailable"]) == (1, 0)
    records = jsonl(out / "gscore.jsonl")
    assert [r["status"] for r in records] == ["malformed", "ok"]
    cached = json.loads(G.Cache(out / G.CACHE_DIR).path(records[0]["key"]).read_text())
    assert len(cached["replies"]) == 3 and len(cached["parse_errors"]) == 3 and cached["scores_by_label"] is None
    # a re-run reproduces it from the cache: the malformed one is not asked again
    assert bench("eval", f"{run}/cat_1", "--judge-repeats", "2", *judge_args(judge_server)) == 0
    assert len(judge_server.requests) == 5
    assert read_csv(out / "metrics.csv")[0] == row


def test_parse_reply_is_strict():
    labels = ["A", "B"]
    assert G.parse_reply('{"scores": {"A": 7, "B": 10}}', labels) == ({"A": 7, "B": 10}, {})
    assert G.parse_reply('```json\n{"scores": {"A": 7.0, "B": 1}, "explanation": {"A": "x"}}\n```', labels) == (
        {"A": 7, "B": 1}, {"A": "x"})
    for bad, why in [('Sure! {"scores": {"A": 7, "B": 5}}', "not JSON"),
                     ('{"scores": {"A": 7}}', "expected"),
                     ('{"scores": {"A": 7, "B": 5, "C": 5}}', "expected"),
                     ('{"scores": {"A": 7.5, "B": 5}}', "not an integer"),
                     ('{"scores": {"A": "7", "B": 5}}', "not an integer"),
                     ('{"scores": {"A": true, "B": 5}}', "not an integer"),
                     ('{"scores": {"A": 0, "B": 5}}', "outside 1..10"),
                     ('{"scores": {"A": 11, "B": 5}}', "outside 1..10"),
                     ('{"scores": {"A": 3, "A": 4, "B": 5}}', "duplicate"),
                     ('[7, 5]', "scores"), ("", "not JSON")]:
        with pytest.raises(G.ReplyError, match=why):
            G.parse_reply(bad, labels)


def test_429_then_200_and_500_then_200_succeed(judge_server, runs):
    judge_server.script = ["429", "500", "503"]
    rc = bench("eval", f"{runs['beta']}/dog_1", "--judge-repeats", "1", *judge_args(judge_server))
    assert rc == 0
    assert len(judge_server.requests) == 4 and len(judge_server.answered) == 1
    assert read_csv(runs["beta"] / "dog_1" / "eval" / "metrics.csv")[0]["gscore"] == "5.0"  # 4, +1 as "A"
    info = json.loads((runs["beta"] / "dog_1" / "eval" / "summary.json").read_text())["info"]["gscore"]
    assert info["http_requests"] == 4 and info["asked"] == 1


def test_a_server_that_keeps_failing_is_given_up_on_and_nothing_is_cached(judge_server, runs, capsys):
    judge_server.script = ["503"] * 1000
    rc = bench("eval", runs["alpha"], "--judge-repeats", "2", "--judge-concurrency", "1", "--judge-retries", "2",
               *judge_args(judge_server))
    assert rc == 1  # incomplete: run again
    # 3 requests in a row without an answer (3 tries each), then the other 3 are not sent
    assert len(judge_server.requests) == 3 * 3
    out = runs["alpha"] / "eval"
    assert [r["gscore_missing"] for r in read_csv(out / "metrics.csv")] == ["2", "2", "2"]
    assert not list((out / G.CACHE_DIR).rglob("*.json"))
    info = json.loads((out / "summary.json").read_text())["info"]["gscore"]
    assert info["missing_unavailable"] == 6
    # then the server is back: the same command fills everything in
    judge_server.script = []
    assert bench("eval", runs["alpha"], "--judge-repeats", "2", *judge_args(judge_server)) == 0
    assert len(judge_server.answered) == 6
    assert [r["gscore_n"] for r in read_csv(out / "metrics.csv")] == ["2", "2", "2"]


def test_a_killed_evaluation_resumes_with_no_request_repeated(judge_server, runs, tmp_path):
    """A real `gooddrag bench eval` process, SIGKILLed while its 5th request hangs; the same command again
    asks only for what was not answered."""
    judge_server.hang_from = 4
    argv = ["bench", "eval", runs["alpha"], runs["beta"], *judge_args(judge_server, "--judge-repeats", "3",
                                                                      "--judge-concurrency", "1")]
    env = os.environ | {G.KEY_ENV: KEY}
    proc = subprocess.Popen([sys.executable, "-m", "gooddrag.cli", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(judge_server.requests) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert len(judge_server.requests) == 5, proc.stderr.read() if proc.poll() is not None else "timeout"
    proc.kill()
    proc.wait(10)
    judge_server.hang_from = None
    judge_server.release.set()
    cache = runs["alpha"] / "eval" / "joint" / G.CACHE_DIR
    assert len(list(cache.rglob("*.json"))) == 4  # the answered requests were cached before the next was sent
    assert not (runs["alpha"] / "eval" / "joint" / "metrics.csv").exists()

    assert bench(*argv[1:]) == 0
    total = len(SAMPLES) * 3
    # Repetitions that happen to show the same order are byte-identical requests, so a request is told
    # apart by what it shows: the (sample, order) of every answered request, counted, must be those of
    # the report's records, each once: nothing answered in the killed run was asked again.
    answered = Counter(as_key(seen_order(read_request(judge_server.requests[i]["body"]), ("alpha", "beta")))
                       for i in judge_server.answered)
    records = jsonl(runs["alpha"] / "eval" / "joint" / "gscore.jsonl")
    assert len(records) == total and all(r["status"] == "ok" for r in records)
    assert answered == Counter(as_key((r["sample"], r["order"])) for r in records)
    assert len(judge_server.answered) == total
    assert len(judge_server.requests) == total + 1  # + the one cut off by the kill, asked again
    assert len(list(cache.rglob("*.json"))) == total
    info = json.loads((runs["alpha"] / "eval" / "joint" / "summary.json").read_text())["info"]["gscore"]
    assert (info["from_cache"], info["asked"]) == (4, total - 4)


def test_no_key_in_any_file(judge_server, runs, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    # the server echoes the key back in a reply and in an error body: neither may reach a file
    judge_server.script = ["echo-auth", "500", "echo-auth", "echo-auth"]
    assert bench("eval", runs["alpha"], runs["beta"], "--judge-key-env", "MY_JUDGE_KEY", "--judge-repeats", "2",
                 "--judge-concurrency", "1", *judge_args(judge_server)) == 0
    assert all(r["auth"] == f"Bearer {KEY}" for r in judge_server.requests)
    root = runs["alpha"].parent
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.parent.parent.name == G.CACHE_DIR for p in files)
    cached = [json.loads(p.read_text()) for p in (runs["alpha"] / "eval" / "joint" / G.CACHE_DIR).rglob("*.json")]
    assert any("[key]" in reply for c in cached for reply in c["replies"])  # echoed, and scrubbed
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    info = json.loads((runs["alpha"] / "eval" / "joint" / "summary.json").read_text())["info"]["gscore"]
    assert info["key_env"] == "MY_JUDGE_KEY"


def test_joint_report_beside_dai_and_a_rerun_reproduces_it_from_the_cache(judge_server, runs):
    argv = ["eval", f"good={runs['alpha']}", runs["beta"], "--metrics", "dai,gscore", "--gamma", "1",
            *judge_args(judge_server, "--judge-repeats", "2")[2:]]
    assert bench(*argv) == 0
    out = runs["alpha"] / "eval" / "joint"
    rows = read_csv(out / "metrics.csv")
    assert list(rows[0])[:4] == ["method", "sample", "category", "pairs"]
    assert {"dai_g1", "gscore", "gscore_sd", "gscore_n"} <= set(rows[0])
    assert sorted((r["method"], r["sample"]) for r in rows) == sorted((m, s) for m in ("good", "beta") for s in SAMPLES)
    text = (out / "summary.md").read_text()
    assert "| metric | good | beta | |" in text
    assert "| gscore_sd |" in text and "spread: SD of all ratings" in text
    assert "| cat | good | 2 |" in text and "GScore: judge fake-vlm at" in text
    summary = json.loads((out / "summary.json").read_text())
    g = summary["info"]["gscore"]
    assert g["model"] == "fake-vlm" and g["url"] == judge_server.url
    assert g["prompt_sha256"] == hashlib.sha256(G.DEFAULT_PROMPT.encode()).hexdigest()
    assert g["settings"]["repeats"] == 2 and g["settings"]["sampling"] == {
        "temperature": 0.4, "top_p": 1.0, "max_tokens": 2048}
    assert set(summary["summary"]) == {"good", "beta"}
    assert summary["info"]["runs"]["beta"]["method"] == "beta"
    ratings = {r["sample"]: [] for r in rows}
    for rec in jsonl(out / "gscore.jsonl"):
        ratings[rec["sample"]] += [rec["scores"]["good"]]
    assert summary["summary"]["good"]["mean"]["gscore_sd"] == pytest.approx(G.pooled_sd(sum(ratings.values(), [])))
    if importlib.util.find_spec("matplotlib"):
        assert (out / "methods.png").stat().st_size > 0
    before = (out / "metrics.csv").read_bytes()
    n = len(judge_server.requests)
    assert n == 6
    assert bench(*argv) == 0
    assert len(judge_server.requests) == n  # nothing asked again
    assert (out / "metrics.csv").read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["info"]["gscore"]["from_cache"] == 6


def test_one_folder_alone_and_a_prompt_file(judge_server, runs, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Rate result(s) $labels from 1 to 10. Reply: $json_example")
    assert bench("eval", runs["gamma"], "--judge-repeats", "1", "--judge-prompt", prompt,
                 *judge_args(judge_server)) == 0
    for req in judge_server.requests:
        seen = read_request(req["body"])
        assert seen["prompt"] == 'Rate result(s) A from 1 to 10. Reply: {"scores": {"A": 7}, "explanation": ' \
                                 '{"A": "one or two sentences"}}'
        assert list(seen["results"]) == ["A"]
    rows = {r["sample"]: r for r in read_csv(runs["gamma"] / "eval" / "metrics.csv")}
    assert {s: float(r["gscore"]) for s, r in rows.items()} == {s: min(10, b + 1) for s, b in BASES["gamma"].items()}
    info = json.loads((runs["gamma"] / "eval" / "summary.json").read_text())["info"]["gscore"]
    assert info["prompt_sha256"] == hashlib.sha256(prompt.read_bytes()).hexdigest()
    assert "GScore: judge fake-vlm" in (runs["gamma"] / "eval" / "summary.md").read_text()


def test_concurrency_is_bounded(judge_server, runs):
    judge_server.delay = 0.05
    assert bench("eval", runs["alpha"], runs["beta"], *judge_args(
        judge_server, "--judge-repeats", "4", "--judge-concurrency", "3")) == 0
    assert len(judge_server.requests) == 12
    assert 2 <= judge_server.most_in_flight <= 3


def test_argument_and_endpoint_errors(judge_server, runs, tmp_path, monkeypatch):
    run = runs["alpha"]
    with pytest.raises(GoodDragError, match="needs --judge-url and --judge-model"):
        bench("eval", run, "--metrics", "gscore")
    with pytest.raises(GoodDragError, match="--judge-repeats must be at least 1, got 0"):
        bench("eval", run, *judge_args(judge_server, "--judge-repeats", "0"))
    with pytest.raises(GoodDragError, match="no such file"):
        bench("eval", run, *judge_args(judge_server, "--judge-prompt", tmp_path / "none.txt"))
    with pytest.raises(GoodDragError, match="NOT_SET_ANYWHERE: that environment variable is not set"):
        bench("eval", run, *judge_args(judge_server, "--judge-key-env", "NOT_SET_ANYWHERE"))
    for url, why in [("localhost:8000", "is not an http"), ("http://", "with a host"), ("http://a host/v1", "with a host"),
                     ("http://[::1", "not a valid URL"), ("http://localhost:99999/v1", "not a valid URL")]:
        with pytest.raises(GoodDragError, match=why):  # before any request: these used to be retried or crash
            bench("eval", run, "--metrics", "gscore", "--judge-url", url, "--judge-model", "m")
    for flag, value, why in [("--judge-timeout", "0", "--judge-timeout must be"),
                             ("--judge-timeout", "-1", "--judge-timeout must be"),
                             ("--judge-backoff", "-1", "--judge-backoff must be")]:
        with pytest.raises(GoodDragError, match=why):
            bench("eval", run, *judge_args(judge_server)[:-2], flag, value)
    (tmp_path / "latin1.txt").write_bytes("Note \xe9 $labels".encode("latin-1"))
    with pytest.raises(GoodDragError, match="is not UTF-8 text"):
        bench("eval", run, *judge_args(judge_server, "--judge-prompt", tmp_path / "latin1.txt"))
    assert judge_server.requests == []
    with pytest.raises(GoodDragError, match="both called 'alpha'"):
        bench("eval", f"alpha={run}", f"alpha={runs['beta']}", *judge_args(judge_server))
    judge_server.script = ["401"]
    with pytest.raises(GoodDragError, match="answered HTTP 401"):
        bench("eval", run, *judge_args(judge_server, "--judge-concurrency", "1"))
    # a query string (an api-version, a token) stays a query after /chat/completions; credentials in the URL
    # are not repeated in the message
    judge_server.script = ["401"]
    with pytest.raises(GoodDragError, match="answered HTTP 401") as err:
        bench("eval", run, "--metrics", "gscore", "--judge-url", judge_server.url.replace("//", "//me:pw-secret@") +
              "?token=tok-secret", "--judge-model", "m", "--no-progress", "--judge-concurrency", "1")
    assert "secret" not in str(err.value) and judge_server.requests[-1]["query"] == "token=tok-secret"
    assert G.chat_url("https://h/openai/v1/?api-version=2") == "https://h/openai/v1/chat/completions?api-version=2"
    assert G.chat_url("http://h:1/v1/chat/completions/") == "http://h:1/v1/chat/completions"
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(GoodDragError, match=r"pip install 'gooddrag\[judge\]'"):
        bench("eval", run, *judge_args(judge_server))


def test_reports_record_the_url_without_credentials_or_query():
    assert G.public_url("https://user:secret@api.example.com:8443/v1?api_key=abc") == "https://api.example.com:8443/v1"
    assert G.public_url("http://localhost:11434/v1") == "http://localhost:11434/v1"


def test_several_folders_without_gscore_dai_and_md_side_by_side(runs, tiny_model_dir):
    """The joint report is not only GScore's: MD (tiny model as DIFT) per method, pooled per method."""
    assert bench("eval", runs["alpha"], runs["beta"], "--metrics", "dai,md", "--gamma", "1", "--no-progress",
                 "--dift-model", tiny_model_dir, "--device", "cpu", "--dift-ensemble", "1",
                 "--eval-out", runs["alpha"].parent / "both") == 0
    out = runs["alpha"].parent / "both"
    rows = read_csv(out / "metrics.csv")
    want = sorted((m, s) for m in ("alpha", "beta") for s in SAMPLES)
    assert sorted((r["method"], r["sample"]) for r in rows) == want
    assert all(r["md"] != "" and r["dai_g1"] != "" for r in rows) and "gscore" not in rows[0]
    assert not (out / "gscore.jsonl").exists() and not (out / G.CACHE_DIR).exists()
    matches = jsonl(out / "matches.jsonl")
    assert sorted({m["method"] for m in matches}) == ["alpha", "beta"]
    text = (out / "summary.md").read_text()
    assert "| md |" in text and "MD pooled over all pairs (as DragBench's script): alpha " in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["beta"]["md_pooled_over_pairs"] == pytest.approx(
        sum(float(r["md"]) for r in rows if r["method"] == "beta") / 3, abs=1e-3)  # matches.jsonl: 4 decimals


def test_gscore_alone_needs_no_points(judge_server, runs):
    """A result folder without new_points.json (another tool's output) can be judged; DAI still needs the points."""
    for m in ("alpha", "beta"):
        for sample in SAMPLES:
            (runs[m] / sample / "new_points.json").unlink()
    assert bench("eval", runs["alpha"], runs["beta"], *judge_args(judge_server, "--judge-repeats", "1")) == 0
    rows = read_csv(runs["alpha"] / "eval" / "joint" / "metrics.csv")
    assert len(rows) == 6 and all(r["gscore_n"] == "1" and r["pairs"] == "" for r in rows)
    assert bench("eval", runs["alpha"], "--metrics", "dai", "--gamma", "1", "--no-progress") == 1
    summary = json.loads((runs["alpha"] / "eval" / "summary.json").read_text())
    assert len(summary["info"]["errors"]) == 3 and "new_points.json" in summary["info"]["errors"][0]["error"]


def test_unanswered_requests_are_reported_with_the_reason(judge_server, runs):
    judge_server.script = ["503"] * 1000
    lines = []
    parser = argparse.ArgumentParser(prog="gooddrag bench")
    register_commands(parser.add_subparsers(dest="bench_command"))
    argv = ["eval", runs["alpha"] / "cat_1", "--judge-repeats", "1", "--judge-retries", "1",
            *judge_args(judge_server)]
    args = parser.parse_args([str(a) for a in argv])
    args.argv = ["bench", *map(str, argv)]
    assert run_command(args, say=lines.append) == 1
    assert "1 unanswered (first: HTTP 503: " in lines[-1] and "run the same command again" in lines[-1]


def test_a_cache_file_that_is_not_an_entry_is_asked_again(judge_server, runs):
    run = runs["alpha"] / "cat_1"
    assert bench("eval", run, "--judge-repeats", "1", *judge_args(judge_server)) == 0
    [cached] = (run / "eval" / G.CACHE_DIR).rglob("*.json")
    cached.write_text("[1, 2]")
    assert bench("eval", run, "--judge-repeats", "1", *judge_args(judge_server)) == 0
    assert len(judge_server.requests) == 2
    assert json.loads(cached.read_text())["status"] == "ok"


def test_ctrl_c_stops_at_once_and_sends_nothing_more(judge_server, runs):
    """SIGINT while requests hang: the process ends within seconds (no waiting for the requests in flight,
    no retries of them) with status 130, and the server sees no request after it."""
    judge_server.hang_from = 0
    argv = ["bench", "eval", runs["alpha"], runs["beta"], *judge_args(judge_server, "--judge-repeats", "3",
                                                                      "--judge-concurrency", "2")]
    proc = subprocess.Popen([sys.executable, "-m", "gooddrag.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(judge_server.requests) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert len(judge_server.requests) == 2, proc.stderr.read() if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:  # the hanging requests would hold it 30 s, then be retried; 20 s leaves room for a loaded
        rc = proc.wait(20)  # machine (once over 10 s while the other test worker ran Ray's workers)
    finally:
        proc.kill()
    assert rc == 130 and time.monotonic() - start < 20
    assert "Traceback" not in proc.stderr.read()
    judge_server.release.set()
    time.sleep(0.3)
    assert len(judge_server.requests) == 2


def test_the_report_and_cache_do_not_depend_on_the_order_of_the_folders(judge_server, runs):
    """A B, then B A (and a third order): the same report folder, so the second run finds every answer cached."""
    assert bench("eval", runs["beta"], runs["alpha"], *judge_args(judge_server, "--judge-repeats", "2")) == 0
    n = len(judge_server.requests)
    assert n == len(SAMPLES) * 2
    for order in [(runs["alpha"], runs["beta"]), (f"beta={runs['beta']}", runs["alpha"])]:
        assert bench("eval", *order, *judge_args(judge_server, "--judge-repeats", "2")) == 0
        assert len(judge_server.requests) == n  # nothing asked again
    out = runs["alpha"] / "eval" / "joint"
    assert json.loads((out / "summary.json").read_text())["info"]["gscore"]["from_cache"] == n
    assert not (runs["beta"] / "eval").exists()
    # one folder alone keeps its own RESULTS/eval
    assert bench("eval", runs["beta"], *judge_args(judge_server, "--judge-repeats", "1")) == 0
    assert (runs["beta"] / "eval" / "metrics.csv").is_file()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_first_connection_ends_at_once_with_one_line(runs):
    """Nothing listens on the port (a typo): the real CLI, default retries and backoff, exits 1 within a few
    seconds with one line naming the URL without its credentials (it used to retry each request for ~63 s)."""
    url = f"http://me:pw-secret@127.0.0.1:{free_port()}/v1"
    argv = ["bench", "eval", runs["alpha"], runs["beta"], "--metrics", "gscore", "--judge-url", url,
            "--judge-model", "m", "--no-progress"]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gooddrag.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: nothing answers at {G.public_url(url)}/chat/completions: connection refused")
    assert "secret" not in proc.stderr
    assert G.REFUSED_WAIT <= took < G.REFUSED_WAIT + 10  # the short wait for a server coming up, no more
    assert not (runs["alpha"] / "eval" / "joint" / "metrics.csv").exists()


def test_a_refused_connection_after_an_answer_is_retried_as_before(judge_server, runs):
    """Once the server has answered, a refused connection (it restarts) is a retry like a 503, not fatal."""
    client = G.JudgeClient(G.JudgeSettings(judge_server.url, "fake-vlm", retries=2, backoff=0.001), None)
    try:
        messages = G.build_messages("p", "data:,", [])
        judge_server.script = ["malformed"]
        assert client.complete(messages).startswith("The first result")
        client.url = G.chat_url(f"http://127.0.0.1:{free_port()}/v1")  # the server is gone
        with pytest.raises(G.JudgeUnavailable, match="ConnectError"):
            client.complete(messages)
        assert client.sent == 1 + 3
    finally:
        client.close()


def test_a_rejected_request_ends_the_evaluation_with_the_servers_message(judge_server, runs, monkeypatch):
    """400 (a parameter the server does not take) would come back for every request: the first one ends the
    evaluation with the server's message and what to change, and nothing more is sent."""
    monkeypatch.setenv(G.KEY_ENV, KEY)
    judge_server.script = ["400"]
    with pytest.raises(GoodDragError) as err:
        bench("eval", runs["alpha"], runs["beta"], *judge_args(judge_server, "--judge-top-k", "32",
                                                               "--judge-concurrency", "1"))
    message = str(err.value)
    assert "\n" not in message and KEY not in message and "[key]" in message
    assert "rejected the request: HTTP 400: 'top_k is not supported by this endpoint (auth was Bearer [key])'" \
        in message and "drop --judge-top-k" in message and judge_server.url in message
    assert len(judge_server.requests) == 1
    assert not (runs["alpha"] / "eval" / "joint" / "metrics.csv").exists()
    # a long message is cut to one readable line; the hint follows what it names
    judge_server.script = ["422"]
    with pytest.raises(GoodDragError, match=r"HTTP 422: .*x\.\.\.' \(every request would get the same answer: "
                                            r"lower --judge-max-tokens, then run again\)$") as err:
        bench("eval", runs["alpha"], *judge_args(judge_server, "--judge-concurrency", "1"))
    assert len(str(err.value)) < 500 and len(judge_server.requests) == 2


def test_samples_not_in_every_folder_are_left_out_of_gscore_and_listed(judge_server, runs):
    """beta lacks dog_1 and gamma lacks cat_2: only cat_1 is judged (all three methods in one request); the
    others keep their DAI rows, have empty GScore columns, and the report says which were left out and why."""
    import shutil

    shutil.rmtree(runs["beta"] / "dog_1")
    shutil.rmtree(runs["gamma"] / "cat_2")
    assert bench("eval", runs["alpha"], runs["beta"], runs["gamma"], "--metrics", "dai,gscore", "--gamma", "1",
                 *judge_args(judge_server, "--judge-repeats", "2")[2:]) == 0
    assert len(judge_server.requests) == 2
    assert all(len(read_request(r["body"])["results"]) == 3 for r in judge_server.requests)
    out = runs["alpha"] / "eval" / "joint"
    rows = read_csv(out / "metrics.csv")
    assert {(r["method"], r["sample"]) for r in rows if r["gscore_n"]} == {(m, "cat_1") for m in BASES}
    assert all(r["dai_g1"] != "" for r in rows) and len(rows) == 3 + 2 + 2
    left = [r for r in rows if r["sample"] != "cat_1"]
    assert all(r["gscore"] == r["gscore_n"] == r["gscore_missing"] == "" for r in left)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["info"]["gscore"]["left_out"] == [{"sample": "cat_2", "missing_from": ["gamma"]},
                                                     {"sample": "dog_1", "missing_from": ["beta"]}]
    assert summary["summary"]["alpha"]["mean"]["gscore"] == pytest.approx(
        float(next(r["gscore"] for r in rows if (r["method"], r["sample"]) == ("alpha", "cat_1"))))
    text = (out / "summary.md").read_text()
    assert "## Left out of GScore (2)" in text
    assert "- cat_2: not scored in gamma" in text and "- dog_1: not scored in beta" in text
    # no sample in common at all: a one-line error before anything is judged
    shutil.rmtree(runs["gamma"] / "cat_1")
    with pytest.raises(GoodDragError, match="no sample is in every results folder"):
        bench("eval", runs["beta"] / "cat_2", runs["gamma"], *judge_args(judge_server))
    assert len(judge_server.requests) == 2
