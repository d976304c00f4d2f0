"""A teacher behind a vLLM OpenAI-compatible server (docs/vllm.md).

Each sequence is one `POST /v1/completions` with the token ids as the prompt, `max_tokens=1`
and `prompt_logprobs=k`; the answer's `choices[0].prompt_logprobs` holds, per prompt token,
`null` (first token) or `{"<id>": {"logprob": ..., "rank": ...}, ...}` with the token itself
plus the top k. Requests for a batch go out concurrently.

A failed request is retried with exponential backoff; after the last retry the step stops
with a TeacherError naming the teacher, the URL and the last error. Scores are never
replaced by zeros: a missing teacher signal would silently train the student on nothing.
The API key is sent as a Bearer header and kept out of every message, repr and log line.

Temperature: vLLM's prompt log-probs ignore the request's temperature (they skip the sampling
processors), so a server scores at the temperature its model was started with. The config says
which (`server_temperature`: 1 for a plain server; 1/s for one started with `--hf-overrides
'{"logit_scale": s}'`, which Llama-family models in vLLM apply to their logits) and it must equal
the sampling temperature, or the student would be pulled toward a differently tempered target.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import httpx
import torch

from mopd.rollout.types import TokenBatch
from mopd.teachers.base import Teacher, TeacherError, TeacherScores

log = logging.getLogger(__name__)


class BadResponse(ValueError):
    """The server answered, but not with what a prompt-log-prob request must return."""


class _Fatal(Exception):
    """An error that retrying cannot fix (a 4xx answer: wrong model name, bad request)."""


class RemoteTeacher(Teacher):
    def __init__(self, name: str, url: str, model: str, timeout_s: float = 60, max_retries: int = 3,
                 backoff_s: float = 1.0, concurrency: int = 8, api_key: str | None = None):
        self.name = name
        self.url = url.rstrip("/")
        self.endpoint = self.url + ("/completions" if self.url.endswith("/v1") else "/v1/completions")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self._secret = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One client for all threads: httpx.Client is thread-safe and pools connections.
        self._client = httpx.Client(timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=concurrency))

    @classmethod
    def from_config(cls, cfg, environ=None, temperature: float | None = None) -> "RemoteTeacher":
        """From a `TeacherConfig` of kind 'remote'; the key is read from `cfg.api_key_env` here only.
        `temperature`: the sampling temperature, which the server must score at (None: not checked)."""
        if temperature is not None and abs(cfg.server_temperature - temperature) > 1e-6:
            raise ValueError(
                f"teacher {cfg.name!r} scores at temperature {cfg.server_temperature:g} "
                f"(teachers[].server_temperature) but rollouts are sampled at {temperature:g}: student and "
                "teacher must be compared at one temperature. vLLM's prompt log-probs ignore temperature: "
                f"start the server with --hf-overrides '{{\"logit_scale\": {1 / temperature:.6g}}}' (Llama-family "
                f"models) and set server_temperature: {temperature:g}, or sample at temperature "
                f"{cfg.server_temperature:g}")
        environ = os.environ if environ is None else environ
        key = None
        if cfg.api_key_env is not None:
            key = environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"teacher {cfg.name!r}: environment variable {cfg.api_key_env} "
                                 "(teachers[].api_key_env) is not set or empty")
        return cls(cfg.name, cfg.url, cfg.served_model, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                   backoff_s=cfg.backoff_s, concurrency=cfg.concurrency, api_key=key)

    def __repr__(self) -> str:  # the key is deliberately absent
        return f"RemoteTeacher(name={self.name!r}, url={self.url!r}, model={self.model!r})"

    def close(self) -> None:
        self._client.close()

    # ---- requests ----

    def _post(self, ids: list[int], k: int) -> list:
        """prompt_logprobs for `ids`, retried; raises TeacherError when every attempt failed."""
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "prompt_logprobs": k}
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("teacher %r: request failed (%s); retry %d/%d in %.2fs",
                            self.name, self._short(last), attempt, self.max_retries, delay)
                time.sleep(delay)
            try:
                resp = self._client.post(self.endpoint, json=body)
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    raise _Fatal(self._redact(f"HTTP {resp.status_code}: {resp.text[:300]}"))
                resp.raise_for_status()
                return parse_prompt_logprobs(resp.json(), ids, k)
            except _Fatal as e:
                last = e
                break
            except (httpx.HTTPError, ValueError) as e:  # transport, timeout, 5xx, bad JSON, BadResponse
                last = e
        tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
        raise TeacherError(f"teacher {self.name!r} at {self.endpoint} failed after {tries}: {self._short(last)}") \
            from last

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        B, T = batch.input_ids.shape
        lengths = batch.attention_mask.sum(-1).tolist()
        rows = [batch.input_ids[i, : lengths[i]].tolist() for i in range(B)]
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, B)), thread_name_prefix=self.name)
        try:
            futures = [pool.submit(self._post, ids, topk) for ids in rows]
            wait(futures, return_when=FIRST_EXCEPTION)
            # The step fails at the first sequence that failed for good, without waiting for the rest.
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()
            answers = [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        lp = torch.zeros((B, T))
        ids_out = torch.zeros((B, T, topk), dtype=torch.long) if topk else None
        lp_out = torch.zeros((B, T, topk)) if topk else None
        for i, entries in enumerate(answers):
            for t in range(1, lengths[i]):
                if not batch.gen_mask[i, t]:
                    continue
                tok_lp, top = entries[t]
                lp[i, t] = tok_lp
                if topk:
                    ids_out[i, t] = torch.tensor([v for v, _ in top])
                    lp_out[i, t] = torch.tensor([x for _, x in top])
        return TeacherScores(lp, ids_out, lp_out)

    def _short(self, e: Exception | None) -> str:
        text = f"{type(e).__name__}: {e}" if e is not None else "unknown error"
        return self._redact(text if len(text) < 400 else text[:400] + "...")

    def _redact(self, text: str) -> str:
        # A server may echo request headers in an error body; the key must not reach our logs.
        return text.replace(self._secret, "***") if self._secret else text

    def probe(self, ids: list[int] | None = None) -> None:
        """Start-up check: the server answers and really returns prompt log-probs."""
        ids = list(ids or [1, 2, 3])
        try:
            self._post(ids, 0)
        except TeacherError as e:
            if isinstance(e.__cause__, httpx.TransportError):
                hint = f"is the server running and answering within timeout_s={self.timeout_s}?"
            else:
                hint = ("the server must be vLLM's OpenAI-compatible server (or another that returns "
                        f"'prompt_logprobs' from /v1/completions) serving model {self.model!r}")
            raise TeacherError(f"{e}. {hint}") from e.__cause__


def parse_prompt_logprobs(data, ids: list[int], k: int) -> list:
    """`[(logprob of ids[t], [(id, logprob)] * k) or None for t=0, ...]`, or BadResponse."""
    try:
        entries = data["choices"][0]["prompt_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise BadResponse("the answer has no choices[0].prompt_logprobs") from None
    if not isinstance(entries, list):
        raise BadResponse("prompt_logprobs is missing (the server ignored the request for prompt log-probs)")
    if len(entries) != len(ids):
        raise BadResponse(f"prompt_logprobs has {len(entries)} entries for {len(ids)} prompt tokens")
    out: list = [None]
    for t in range(1, len(ids)):
        e = entries[t]
        if not isinstance(e, dict):
            raise BadResponse(f"prompt_logprobs[{t}] is {type(e).__name__}, not an object")
        own = e.get(str(ids[t]))
        if own is None:
            raise BadResponse(f"prompt_logprobs[{t}] lacks the prompt's token id {ids[t]}")
        lp = _logprob(own, t)
        top = []
        if k:
            if len(e) < k:
                raise BadResponse(f"prompt_logprobs[{t}] has {len(e)} entries, fewer than top-k={k}")
            # The token itself comes too when it is outside the top k: keep the k most likely.
            top = sorted(((int(v), _logprob(x, t)) for v, x in e.items()), key=lambda p: -p[1])[:k]
        out.append((lp, top))
    return out


def _logprob(entry, t: int) -> float:
    value = entry.get("logprob") if isinstance(entry, dict) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadResponse(f"prompt_logprobs[{t}] has a log-prob that is not a finite number: {value!r}")
    return float(value)

