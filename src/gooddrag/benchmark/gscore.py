"""GScore: a vision-language model's 1-10 rating of how natural an edited image
looks and how free of artifacts it is, judged against the original.

The GoodDrag paper reports it beside DAI. The authors' notebook
(zewei-Zhang/GoodDrag, ``evaluation/GScore.ipynb``) sends the original and
three methods' results to gemini-pro-vision (temperature 0.4, top_p 1, top_k
32, max_output_tokens 2048), always in the same order, 10 times per sample,
and keeps the free-text answers. Here:

- any OpenAI-compatible ``/chat/completions`` endpoint with images (a hosted
  model, vLLM, Ollama, LM Studio, ...), through ``httpx`` (``pip install
  'gooddrag[judge]'``); the key comes from an environment variable and is
  never written anywhere (it is also scrubbed from any reply text we store);
- our own prompt (:data:`DEFAULT_PROMPT`, or ``--judge-prompt FILE``) asking
  for a JSON object of scores by label, parsed strictly (:func:`parse_reply`);
  a reply that does not parse is asked again (``parse_retries``), then
  recorded as missing, never guessed;
- every method's result for a sample is judged in one request, in an order
  shuffled per repetition from a seeded RNG (:func:`shuffled_order`), labels
  mapped back to methods;
- every request's outcome is cached as one JSON file, keyed by the images'
  hashes, the prompt, the model and the sampling settings
  (:func:`request_key`), written atomically, so an interrupted evaluation
  resumes without asking again and a re-run reproduces the table. A request
  that failed for the network (429/5xx/connection errors after the retry
  budget) is not cached: running again fills it in;
- answers that no retry can mend end the evaluation at the first one, with
  one line: 401/403/404 (key, URL, model), any other 4xx (a setting the
  server rejects; its message is quoted), and a refused connection before the
  server has ever answered (nothing listens there; retried for at most
  :data:`REFUSED_WAIT` seconds in all, as a server that is starting refuses too).

Importing this module is cheap (the standard library, PIL and tqdm; httpx is
imported when there is something to ask).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import queue
import random
import re
import string
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from PIL import Image
from tqdm.auto import tqdm

from ..core.atomic import write_json_atomic
from ..errors import GoodDragError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # part of every cache key: bump when the request's wording or layout changes
LABELS = string.ascii_uppercase
KEY_ENV = "GOODDRAG_JUDGE_API_KEY"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
CACHE_DIR = "gscore-cache"
REFUSED_WAIT = 5.0  # seconds a refused connection is retried for, in all, while the server has never answered
AUTHORS = {  # read in zewei-Zhang/GoodDrag, evaluation/GScore.ipynb
    "source": "zewei-Zhang/GoodDrag, evaluation/GScore.ipynb",
    "model": "gemini-pro-vision", "temperature": 0.4, "top_p": 1, "top_k": 32, "max_output_tokens": 2048,
    "repeats": 10, "order": "fixed (GoodDrag, DragDiffusion, SDE-Drag as images 2-4)",
}

DEFAULT_PROMPT = """\
You are grading image edits. The first image below is the ORIGINAL photograph: it is only the reference \
and gets no score. Each image after it, introduced by its label ($labels), is the same photograph after \
an edit that dragged part of its content to a new place.

For each labelled result, judge its visual quality compared with the original: does it look like a \
natural, believable photograph, and is it free of artifacts such as smeared or melted regions, warped or \
duplicated structures, broken textures, seams, blur, noise, or colours that do not match? Parts of the \
original that should not have changed ought to be kept intact. The labels and their order carry no \
meaning; rate every result on its own merits.

Score each of the $count result(s) with an integer from 1 to 10: 10 means it could pass for an unedited \
photograph with no visible flaw, 1 means the edit wrecked the picture and the damage is the first thing a \
viewer sees. Explain each score briefly.

Answer with one JSON object and nothing else, in exactly this form:
$json_example
"""

FIX_PROMPT = ("That reply could not be read as the JSON object asked for. Answer again with only the JSON "
              "object, with an integer score from 1 to 10 for each of the labels $labels.")


class ReplyError(ValueError):
    """A judge's reply that is not the JSON object asked for."""


class JudgeUnavailable(Exception):
    """The endpoint did not answer (connection errors, timeouts, 429 or 5xx) within the retry budget."""


# ------------------------------------------------------------ settings and inputs
@dataclass(frozen=True)
class JudgeSettings:
    url: str
    model: str
    temperature: float = 0.4
    top_p: float = 1.0
    top_k: int | None = None
    max_tokens: int = 2048
    repeats: int = 10
    seed: int = 0
    concurrency: int = 4
    retries: int = 6
    parse_retries: int = 2
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float = 120.0
    give_up_after: int = 3

    def sampling(self) -> dict:
        """The sampling fields of the request body (also part of the cache key)."""
        out = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return out | ({"top_k": self.top_k} if self.top_k is not None else {})

    def check(self) -> None:
        if not self.url or not self.model:
            raise GoodDragError("--metrics gscore needs --judge-url and --judge-model "
                                "(e.g. --judge-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-VL-7B-Instruct)")
        check_url(self.url)
        for name, value, low in (("--judge-repeats", self.repeats, 1), ("--judge-concurrency", self.concurrency, 1),
                                 ("--judge-retries", self.retries, 0), ("--judge-parse-retries", self.parse_retries, 0),
                                 ("--judge-max-tokens", self.max_tokens, 1)):
            if value < low:
                raise GoodDragError(f"{name} must be at least {low}, got {value}")
        if not 0 <= self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise GoodDragError(f"need 0 <= --judge-temperature <= 2 and 0 < --judge-top-p <= 1, "
                                f"got {self.temperature} and {self.top_p}")
        if not self.timeout > 0 or not math.isfinite(self.timeout):
            raise GoodDragError(f"--judge-timeout must be a number of seconds above 0, got {self.timeout}")
        if not 0 <= self.backoff <= self.max_backoff:
            raise GoodDragError(f"--judge-backoff must be between 0 and {self.max_backoff:g} seconds, got {self.backoff}")


def check_url(url: str) -> None:
    """A one-line error unless ``url`` is an http(s) URL with a host (and a valid port, if any)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as err:
        raise GoodDragError(f"--judge-url {url!r} is not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise GoodDragError(f"--judge-url {url!r} is not an http(s) URL with a host, e.g. http://localhost:8000/v1")


@dataclass(frozen=True)
class ImageRef:
    path: Path
    sha256: str
    mime: str


@dataclass(frozen=True)
class JudgeItem:
    """One sample: its original and each method's result."""

    sample: str
    original: ImageRef
    results: dict[str, ImageRef]


@dataclass
class Job:
    item: JudgeItem
    rep: int
    order: list[str]  # methods in the order shown, label i = LABELS[i]
    prompt: str
    key: str

    @property
    def labels(self) -> list[str]:
        return list(LABELS[: len(self.order)])


def image_ref(path: str | Path) -> ImageRef:
    path = Path(path)
    data = path.read_bytes()
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg" if data[:3] == b"\xff\xd8\xff" else None
    return ImageRef(path, hashlib.sha256(data).hexdigest(), mime or "image/png")


def data_url(ref: ImageRef) -> str:
    """The file as a base64 data URL: PNG and JPEG as they are, anything else converted to PNG."""
    data = ref.path.read_bytes()
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        buf = io.BytesIO()
        with Image.open(ref.path) as im:
            im.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    return f"data:{ref.mime};base64,{base64.b64encode(data).decode('ascii')}"


def load_prompt(path: str | Path | None) -> str:
    if path is None:
        return DEFAULT_PROMPT
    p = Path(path)
    if not p.is_file():
        raise GoodDragError(f"--judge-prompt {str(p)!r}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GoodDragError(f"--judge-prompt {str(p)!r} is not UTF-8 text") from None
    except OSError as err:
        raise GoodDragError(f"--judge-prompt {str(p)!r}: {err.strerror or err}") from None
    if not text.strip():
        raise GoodDragError(f"--judge-prompt {str(p)!r} is empty")
    return text


def prompt_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _and_list(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def render_prompt(template: str, labels: list[str]) -> str:
    """``$labels``, ``$count`` and ``$json_example`` filled in (other ``$`` text is left alone)."""
    example = json.dumps({"scores": {lab: 7 for lab in labels},
                          "explanation": {lab: "one or two sentences" for lab in labels}})
    return string.Template(template).safe_substitute(labels=_and_list(labels), count=len(labels),
                                                     json_example=example)


def shuffled_order(methods, seed: int, sample: str, rep: int) -> list[str]:
    """The methods (sorted by name, then shuffled by a RNG seeded with seed, sample and repetition)."""
    order = sorted(methods)
    random.Random(f"{seed}:{sample}:{rep}").shuffle(order)
    return order


def build_messages(prompt: str, original_url: str, labelled_urls: list[tuple[str, str]]) -> list[dict]:
    """One user message: the prompt, the original, then each result after a text part naming its label."""
    content = [{"type": "text", "text": prompt}, {"type": "text", "text": "ORIGINAL (reference, not scored):"},
               {"type": "image_url", "image_url": {"url": original_url}}]
    for label, url in labelled_urls:
        content += [{"type": "text", "text": f"Result {label}:"}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": content}]


def request_key(model: str, prompt: str, sampling: dict, original_sha: str, labelled_shas: list[tuple[str, str]],
                rep: int) -> str:
    doc = {"version": FORMAT_VERSION, "model": model, "prompt": prompt, "sampling": sampling,
           "original": original_sha, "results": [list(p) for p in labelled_shas], "rep": rep}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


def make_jobs(items: list[JudgeItem], settings: JudgeSettings, template: str) -> list[Job]:
    jobs = []
    for item in items:
        for rep in range(settings.repeats):
            order = shuffled_order(item.results, settings.seed, item.sample, rep)
            labels = list(LABELS[: len(order)])
            prompt = render_prompt(template, labels)
            key = request_key(settings.model, prompt, settings.sampling(), item.original.sha256,
                              [(lab, item.results[m].sha256) for lab, m in zip(labels, order)], rep)
            jobs.append(Job(item, rep, order, prompt, key))
    return jobs


# ------------------------------------------------------------------ the reply
def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ReplyError(f"duplicate key in {keys}")
    return dict(pairs)


def parse_reply(text: str, labels: list[str]) -> tuple[dict[str, int], dict]:
    """``{"scores": {label: 1..10}, ...}`` -> (scores by label, explanations by label).

    The whole reply must be that one JSON object (one surrounding markdown code
    fence is allowed); every label exactly once; each score an integer 1..10
    (7.0 counts as 7, 7.5 does not). Anything else raises :class:`ReplyError`.
    """
    s = (text or "").strip()
    fence = re.fullmatch(r"```(?:json|JSON)?\s*\n?(.*?)\n?\s*```", s, re.S)
    if fence:
        s = fence.group(1).strip()
    try:
        obj = json.loads(s, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise ReplyError(f"not JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("scores"), dict):
        raise ReplyError('not an object with a "scores" object')
    scores = obj["scores"]
    if sorted(scores) != sorted(labels):
        raise ReplyError(f"scores for {sorted(scores)}, expected {sorted(labels)}")
    out = {}
    for lab in labels:
        v = scores[lab]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise ReplyError(f"score of {lab} is {v!r}, not an integer")
        if not 1 <= v <= 10:
            raise ReplyError(f"score of {lab} is {v}, outside 1..10")
        out[lab] = int(v)
    expl = obj.get("explanation")
    return out, ({k: str(v) for k, v in expl.items()} if isinstance(expl, dict) else {})


def map_back(scores_by_label: dict[str, int], order: list[str]) -> dict[str, int]:
    """Scores by label -> scores by method (label ``LABELS[i]`` showed ``order[i]``)."""
    return {method: scores_by_label[LABELS[i]] for i, method in enumerate(order)}


# ------------------------------------------------------------------ the cache
class Cache:
    """One JSON file a request: ``DIR/<key[:2]>/<key>.json``, written atomically."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        if not isinstance(entry, dict) or entry.get("status") not in ("ok", "malformed"):
            logger.warning("unreadable cache file %s: asking again", p)
            return None
        return entry if entry.get("key") == key else None

    def put(self, key: str, entry: dict) -> None:
        write_json_atomic(self.path(key), entry)


# ------------------------------------------------------------------ the client
def chat_url(url: str) -> str:
    """The chat completions URL of a base URL (``.../v1``): its path ending in ``/chat/completions``, query kept
    (e.g. an ``api-version``)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit(parts._replace(path=path if path.endswith("/chat/completions") else path + "/chat/completions"))


def public_url(url: str) -> str:
    """The URL as recorded in reports: without user:password@ and without a query string."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname
                       else parts.netloc, parts.path, "", ""))


def api_key_from_env(name: str | None) -> tuple[str | None, str | None]:
    """(key, variable it came from). ``name`` None: $GOODDRAG_JUDGE_API_KEY, else $OPENAI_API_KEY, else no key."""
    if name:
        if name not in os.environ:
            raise GoodDragError(f"--judge-key-env {name}: that environment variable is not set")
        return os.environ[name], name
    for var in (KEY_ENV, FALLBACK_KEY_ENV):
        if os.environ.get(var):
            return os.environ[var], var
    return None, None


class JudgeClient:
    """POSTs chat completions with bounded retries: 408, 429, 5xx and connection errors back off
    (``Retry-After`` when given, else ``backoff * 2**attempt``, capped at ``max_backoff``)."""

    def __init__(self, settings: JudgeSettings, api_key: str | None, sleep=None):
        httpx = import_httpx()
        self.stop = threading.Event()  # set: no more tries, backoff waits end at once
        self.httpx, self.settings, self._key = httpx, settings, api_key
        self.sleep = sleep or self.stop.wait
        self._warned = False
        self.answered = False  # any HTTP answer yet: from then on a refused connection is retried as usual
        self._refused_since: float | None = None
        self.url = chat_url(settings.url)
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.http = httpx.Client(headers=headers, timeout=settings.timeout)
        self.sent = 0
        self._lock = threading.Lock()

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced, should a server echo it back."""
        return text.replace(self._key, "[key]") if self._key else text

    def complete(self, messages: list[dict]) -> str:
        s = self.settings
        body = json.dumps({"model": s.model, "messages": messages, **s.sampling()}).encode("utf-8")
        reason = ""
        for attempt in range(s.retries + 1):
            if self.stop.is_set():
                raise JudgeUnavailable("interrupted" + (f" ({reason.splitlines()[0]})" if reason else ""))
            wait = None
            with self._lock:
                self.sent += 1
            try:
                r = self.http.post(self.url, content=body)
            except self.httpx.TransportError as err:
                reason = f"{type(err).__name__}: {self.scrub(str(err))[:200]}"
                refused_for = self._refused_for(err)
            else:
                self.answered, refused_for = True, None
                if r.status_code == 200:
                    return self._content(r)
                reason = f"HTTP {r.status_code}: {self.scrub(r.text)[:200]}"
                if r.status_code in (401, 403, 404):
                    raise GoodDragError(f"the judge at {public_url(self.url)} answered {reason.splitlines()[0]} "
                                        "(check --judge-url, --judge-model and the key's environment variable)")
                if r.status_code not in (408, 429) and r.status_code < 500:
                    raise GoodDragError(self._refusal(r))
                wait = _retry_after(r.headers.get("retry-after"))
            if refused_for is not None and (refused_for >= REFUSED_WAIT or attempt == s.retries):
                raise GoodDragError(f"nothing answers at {public_url(self.url)}: connection refused (gave up after "
                                    f"{refused_for:.1f} s; is the server running, and are the host and port in "
                                    "--judge-url right? a server still loading its model refuses connections too: "
                                    "run this again once it answers)")
            if attempt < s.retries:
                delay = min(s.max_backoff, wait if wait is not None else s.backoff * 2 ** attempt)
                if refused_for is not None:
                    delay = min(delay, REFUSED_WAIT - refused_for)
                # the first retry is shown (the wait can be long), the others with --verbose; a refused connection
                # before any answer only with --verbose (the wait is short and ends in an error that says it all)
                with self._lock:
                    level = logging.INFO if self._warned or refused_for is not None else logging.WARNING
                    self._warned = self._warned or refused_for is None
                logger.log(level, "judge: %s; retry %d/%d in %.2f s", reason.splitlines()[0], attempt + 1,
                           s.retries, delay)
                self.sleep(delay)
        raise JudgeUnavailable(reason.splitlines()[0] if reason else "no answer")

    def _refused_for(self, err: Exception) -> float | None:
        """Seconds since the first refused connection, when ``err`` is one and the server has never answered;
        else None (retried as usual)."""
        refused = False
        while err is not None and not refused:
            refused, err = isinstance(err, ConnectionRefusedError), err.__cause__ or err.__context__
        if not refused or self.answered:
            return None
        with self._lock:
            now = time.monotonic()
            self._refused_since = self._refused_since if self._refused_since is not None else now
            return now - self._refused_since

    def _refusal(self, r) -> str:
        """The one line for a 4xx no retry can mend: the server's own message, and what to change."""
        try:
            doc = r.json()
        except ValueError:
            doc = None
        message = doc if isinstance(doc, str) else None
        if isinstance(doc, dict):
            err = doc.get("error")
            message = err.get("message") if isinstance(err, dict) else err
            message = message or doc.get("message") or doc.get("detail")
        if not isinstance(message, str):
            message = json.dumps(message) if message else r.text
        message = " ".join(self.scrub(message).split())
        message = message if len(message) <= 300 else message[:297] + "..."
        low = message.lower()
        if "top_k" in low or "top-k" in low:
            hint = "drop --judge-top-k"
        elif "token" in low or "context" in low:
            hint = "lower --judge-max-tokens"
        elif "image" in low or "multimodal" in low or "vision" in low:
            hint = "choose a --judge-model that takes images"
        else:
            hint = "change the --judge-* setting it names"
        return (f"the judge at {public_url(self.url)} rejected the request: HTTP {r.status_code}: {message!r} "
                f"(every request would get the same answer: {hint}, then run again)")

    def _content(self, r) -> str:
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return self.scrub(r.text)  # not a chat completion: parse_reply will say so
        if isinstance(content, list):  # some servers answer in parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return self.scrub(content if isinstance(content, str) else json.dumps(content))

    def close(self) -> None:
        self.http.close()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


# ------------------------------------------------------------------ judging
@dataclass
class JudgeOutcome:
    records: list[dict] = field(default_factory=list)  # one per (sample, repetition), sorted
    from_cache: int = 0
    asked: int = 0
    http_requests: int = 0
    malformed: int = 0  # judged but never parsed: final, cached
    unavailable: int = 0  # no answer (network, refused): not cached, run again

    @property
    def missing(self) -> int:
        return self.malformed + self.unavailable


def _ask(client: JudgeClient, job: Job, settings: JudgeSettings) -> dict:
    original_url = data_url(job.item.original)
    labelled = [(lab, data_url(job.item.results[m])) for lab, m in zip(job.labels, job.order)]
    messages = build_messages(job.prompt, original_url, labelled)
    replies, errors = [], []
    for _ in range(settings.parse_retries + 1):
        text = client.complete(messages)
        replies.append(text)
        try:
            scores, explanation = parse_reply(text, job.labels)
        except ReplyError as err:
            errors.append(str(err))
            fix = string.Template(FIX_PROMPT).safe_substitute(labels=_and_list(job.labels))
            messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": fix}]
            continue
        return {"status": "ok", "scores_by_label": scores, "explanation": explanation, "replies": replies,
                "parse_errors": errors}
    return {"status": "malformed", "scores_by_label": None, "explanation": {}, "replies": replies,
            "parse_errors": errors}


def _record(job: Job, entry: dict | None, status: str, *, cached: bool, error: str | None = None) -> dict:
    by_label = (entry or {}).get("scores_by_label")
    return {"sample": job.item.sample, "rep": job.rep, "key": job.key, "order": job.order, "labels": job.labels,
            "status": status, "scores": map_back(by_label, job.order) if by_label else None,
            "from_cache": cached, "error": error}


def judge(items: list[JudgeItem], settings: JudgeSettings, template: str, cache_dir: str | Path,
          api_key: str | None = None, *, progress: bool = False, client: JudgeClient | None = None) -> JudgeOutcome:
    """Judge every item ``settings.repeats`` times; cached requests are not asked again.

    Up to ``settings.concurrency`` requests are in flight (:class:`_Asker`); after
    ``settings.give_up_after`` requests in a row got no answer, the rest are not
    sent (recorded unavailable, run again later). A fatal answer (401, 400, ...)
    or Ctrl-C is raised here at once, without waiting for the requests in flight.
    """
    cache = Cache(cache_dir)
    jobs = make_jobs(items, settings, template)
    records = _cached_records(jobs, cache)  # job index -> record
    todo = [i for i in range(len(jobs)) if i not in records]
    out = JudgeOutcome(from_cache=len(records), asked=len(todo))
    if todo:
        client = client or JudgeClient(settings, api_key)
    with tqdm(total=len(jobs), initial=out.from_cache, desc=f"gscore {settings.model}", unit="request",
              disable=not progress, dynamic_ncols=True) as bar:

        def done(i: int, record: dict) -> None:
            records[i] = record
            bar.update(1)

        if todo:
            _Asker(jobs, client, cache, settings).run(todo, done)
            out.http_requests = client.sent
    out.records = [records[i] for i in range(len(jobs))]
    out.malformed = sum(r["status"] == "malformed" for r in out.records)
    out.unavailable = sum(r["status"] == "unavailable" for r in out.records)
    return out


def _cached_records(jobs: list[Job], cache: Cache) -> dict[int, dict]:
    """{job index: record} of the jobs whose answer is in the cache."""
    records = {}
    for i, job in enumerate(jobs):
        entry = cache.get(job.key)
        if entry is not None:
            records[i] = _record(job, entry, entry["status"], cached=True)
    return records


@dataclass(frozen=True)
class _Finished:
    """A worker's report on one job: its record, or the error that ends the evaluation (a fatal answer)."""

    index: int
    record: dict | None = None
    error: BaseException | None = None


class _Asker:
    """Asks the judge for jobs on daemon threads, and keeps the count of requests in a row without an answer.

    Daemon threads, not a ``concurrent.futures.ThreadPoolExecutor``: the interpreter joins an executor's
    threads at exit, even after ``shutdown(wait=False, cancel_futures=True)``, so Ctrl-C would wait for every
    request in flight (up to --judge-timeout each). Here, after Ctrl-C or a fatal answer, no request is started
    or retried, and the process does not wait for the ones in flight (what they answer is cached if it comes
    before the process ends; nothing half-written: atomic files).
    """

    def __init__(self, jobs: list[Job], client: JudgeClient, cache: Cache, settings: JudgeSettings):
        self.jobs, self.client, self.cache, self.settings = jobs, client, cache, settings
        self.stopped = threading.Event()  # Ctrl-C or a fatal answer: no thread starts another request
        self.gave_up: str | None = None  # why the requests not yet sent are not sent (their records' error)
        self.failed_in_a_row = 0
        self.lock = threading.Lock()

    def run(self, todo: list[int], done: Callable[[int, dict], None]) -> None:
        """Ask for ``jobs[i]``, i in ``todo``, on up to ``settings.concurrency`` threads; ``done(i, record)`` is
        called in this thread as each ends. A worker's error (a fatal answer) is raised here."""
        tasks: queue.SimpleQueue = queue.SimpleQueue()  # job indices not yet started
        for i in todo:
            tasks.put(i)
        finished: queue.SimpleQueue = queue.SimpleQueue()  # _Finished, in the order they end
        threads = [threading.Thread(target=self._worker, args=(tasks, finished), name=f"gscore-{k}", daemon=True)
                   for k in range(min(self.settings.concurrency, len(todo)))]
        try:
            for t in threads:
                t.start()
            for _ in todo:
                f = finished.get()
                if f.error is not None:
                    raise f.error
                done(f.index, f.record)
        except BaseException:  # interrupted or a fatal answer: requests not yet started are not sent
            self.stop()
            raise
        finally:
            if not self.stopped.is_set():  # else threads may still use it; the process is ending
                self.client.close()

    def stop(self) -> None:
        """No request is started from now on, no retry is made and backoff waits end."""
        self.stopped.set()
        self.client.stop.set()

    def _worker(self, tasks: queue.SimpleQueue, finished: queue.SimpleQueue) -> None:
        while not self.stopped.is_set():
            try:
                i = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put(_Finished(i, record=self.ask(self.jobs[i])))
            except BaseException as err:  # noqa: BLE001 - handed to the calling thread, which raises it
                self.stop()  # before handing it over: no thread starts another request
                finished.put(_Finished(i, error=err))
                return

    def ask(self, job: Job) -> dict:
        """The job's record: asked (and cached when answered), or unavailable without asking once given up."""
        if self.gave_up or self.stopped.is_set():
            return _record(job, None, "unavailable", cached=False, error=self.gave_up or "interrupted")
        try:
            entry = _ask(self.client, job, self.settings)
        except JudgeUnavailable as err:
            self._unanswered(err)
            return _record(job, None, "unavailable", cached=False, error=str(err))
        with self.lock:
            self.failed_in_a_row = 0
        entry |= {"key": job.key, "sample": job.item.sample, "rep": job.rep, "order": job.order,
                  "labels": job.labels, "model": self.settings.model, "sampling": self.settings.sampling(),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.cache.put(job.key, entry)
        return _record(job, entry, entry["status"], cached=False)

    def _unanswered(self, err: JudgeUnavailable) -> None:
        """One more request in a row without an answer; at ``give_up_after`` the rest are not sent."""
        with self.lock:
            self.failed_in_a_row += 1
            if (self.failed_in_a_row >= self.settings.give_up_after and self.gave_up is None
                    and not self.stopped.is_set()):
                self.gave_up = f"gave up after {self.settings.give_up_after} requests in a row got no answer: {err}"
                logger.warning("judge: %s", self.gave_up)


# ------------------------------------------------------------------ scores
def ratings_by_method(outcome: JudgeOutcome) -> dict[tuple[str, str], list[int]]:
    """{(method, sample): [valid ratings, by repetition]}."""
    out: dict[tuple[str, str], list[int]] = {}
    for r in outcome.records:
        for method in r["order"]:
            out.setdefault((method, r["sample"]), [])
            if r["scores"]:
                out[(method, r["sample"])].append(r["scores"][method])
    return out


def sample_columns(ratings: list[int], repeats: int) -> dict:
    """A row's GScore columns: mean and SD over the repetitions, valid and missing counts."""
    n = len(ratings)
    mean = sum(ratings) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in ratings) / (n - 1)) if n > 1 else (0.0 if n else None)
    return {"gscore": mean, "gscore_sd": sd, "gscore_n": n, "gscore_missing": repeats - n, "gscore_ratings": ratings}


def pooled_sd(values: list[float]) -> float | None:
    """Sample standard deviation of every rating (None for fewer than 2)."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def info(settings: JudgeSettings, template: str, prompt_file, key_env: str | None, cache_dir: Path,
         outcome: JudgeOutcome) -> dict:
    """What summary.json records about the judge (never the key)."""
    orders: dict[str, list[list[str]]] = {}
    for r in outcome.records:
        orders.setdefault(r["sample"], []).append(r["order"])
    return {
        "url": public_url(settings.url), "model": settings.model, "prompt_sha256": prompt_sha256(template),
        "prompt_file": str(Path(prompt_file).resolve()) if prompt_file else None,
        "key_env": key_env,
        "settings": asdict(settings) | {"url": public_url(settings.url), "sampling": settings.sampling()},
        "cache": str(cache_dir), "format_version": FORMAT_VERSION,
        "requests": len(outcome.records), "from_cache": outcome.from_cache, "asked": outcome.asked,
        "http_requests": outcome.http_requests, "missing_malformed": outcome.malformed,
        "missing_unavailable": outcome.unavailable, "orders": orders,
        "authors_notebook": AUTHORS,
    }


# ------------------------------------------------------------------ CLI
def add_judge_arguments(p) -> None:
    g = p.add_argument_group("GScore (a vision-language judge on an OpenAI-compatible endpoint)")
    g.add_argument("--judge-url", default=None,
                   help="base URL of the chat completions API, e.g. http://localhost:8000/v1 (vLLM), "
                        "http://localhost:11434/v1 (Ollama) or https://api.openai.com/v1")
    g.add_argument("--judge-model", default=None, help="model name the endpoint knows")
    g.add_argument("--judge-key-env", default=None,
                   help=f"environment variable holding the API key (default: {KEY_ENV}, else {FALLBACK_KEY_ENV}, "
                        "else no key)")
    g.add_argument("--judge-prompt", default=None,
                   help="prompt file; $labels, $count and $json_example are filled in (default: ours, see "
                        "docs/benchmarking.md)")
    g.add_argument("--judge-repeats", type=int, default=10, help="requests per sample (default: %(default)s)")
    g.add_argument("--judge-seed", type=int, default=0, help="seed of the shuffled order (default: %(default)s)")
    g.add_argument("--judge-temperature", type=float, default=0.4,
                   help="sampling temperature (default: %(default)s, as the authors' notebook)")
    g.add_argument("--judge-top-p", type=float, default=1.0,
                   help="nucleus sampling (default: %(default)s, as the authors' notebook)")
    g.add_argument("--judge-top-k", type=int, default=None,
                   help="sent only when given; vLLM and Ollama accept it, OpenAI does not (default: not sent)")
    g.add_argument("--judge-max-tokens", type=int, default=2048,
                   help="longest reply in tokens (default: %(default)s, as the authors' notebook)")
    g.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    g.add_argument("--judge-retries", type=int, default=6,
                   help="retries of a request on 429, 5xx or a connection error (default: %(default)s)")
    g.add_argument("--judge-parse-retries", type=int, default=2,
                   help="times a reply that is not the asked-for JSON is asked again (default: %(default)s)")
    g.add_argument("--judge-backoff", type=float, default=1.0,
                   help="first retry delay in seconds, doubled each retry (default: %(default)s)")
    g.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")


def settings_from_args(args) -> JudgeSettings:
    settings = JudgeSettings(
        url=args.judge_url or "", model=args.judge_model or "", temperature=args.judge_temperature,
        top_p=args.judge_top_p, top_k=args.judge_top_k, max_tokens=args.judge_max_tokens,
        repeats=args.judge_repeats, seed=args.judge_seed, concurrency=args.judge_concurrency,
        retries=args.judge_retries, parse_retries=args.judge_parse_retries, backoff=args.judge_backoff,
        timeout=args.judge_timeout,
    )
    settings.check()
    return settings


def import_httpx():
    """The httpx module, or a one-line error naming the extra that installs it."""
    try:  # optional extra [judge]
        import httpx
    except ImportError:
        raise GoodDragError("GScore needs httpx: pip install 'gooddrag[judge]'") from None
    return httpx
