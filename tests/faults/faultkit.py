"""Helpers for the fault tests: a vLLM-like teacher stub on 127.0.0.1 and tiny run configs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
TOY = {"n_train": 30, "n_eval": 5}


def teacher_dir(root: Path, seed: int = 11) -> Path:
    """A saved tiny model (the teacher of the fault-test runs)."""
    path = root / f"teacher-{seed}"
    if not path.exists():
        tok = char_tokenizer()
        save_pretrained(tiny_model(tok, seed=seed, **TINY), tok, path)
    return path


def run_data(out: Path, teacher: dict, steps: int = 4, **extra) -> dict:
    """A two-domain distillation config for tiny models (as a dict, for load_config or YAML)."""
    return {
        "output_dir": str(out), "seed": 3,
        "student": {"tiny": {**TINY, "seed": 1}},
        "teachers": [{"name": "t", **teacher}],
        "domains": [{"name": "rev", "teacher": "t", "weight": 2,
                     "prompts": {"builtin": "reversal", "params": TOY}},
                    {"name": "sort", "teacher": "t", "prompts": {"builtin": "sorting", "params": TOY}}],
        "sampling": {"prompts_per_step": 4, "max_new_tokens": 5},
        "optim": {"steps": steps, "lr": 1e-3, "grad_accum_steps": 2},
        "checkpoint": {"every": 2, "keep": 2},
        "logging": {"progress": False},
        **extra,
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TeacherStub:
    """A stand-in for `vllm serve`: POST /v1/completions with token ids -> prompt_logprobs.

    `script` holds one behaviour per request, consumed in order; when it is empty every request
    gets `default`. Behaviours: ok (real log-probs of `model`), fail (HTTP 500), hang (no answer
    for `hang_s`), garbage (not JSON), no_logprobs, short (one entry missing), missing_id
    (the token's own id absent), nan (a NaN log-prob), reject (HTTP 401 echoing the headers).
    """

    def __init__(self, model=None, default: str = "ok", hang_s: float = 2.0):
        self.model = model.eval() if model is not None else None
        self.default, self.hang_s = default, hang_s
        self.script: list[str] = []
        self.requests: list[dict] = []  # {"body", "headers", "behaviour"}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    what = stub.script.pop(0) if stub.script else stub.default
                    stub.requests.append({"body": body, "headers": dict(self.headers), "behaviour": what})
                stub.answer(self, what, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "TeacherStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, h: BaseHTTPRequestHandler, what: str, body: dict) -> None:
        if what == "hang":
            time.sleep(self.hang_s)
            return
        if what in ("fail", "reject"):
            text = "internal error" if what == "fail" else "unauthorized: " + json.dumps(dict(h.headers))
            return self._send(h, 500 if what == "fail" else 401, text.encode())
        if what == "garbage":
            return self._send(h, 200, b"<html>502 Bad Gateway</html>")
        ids, k = body["prompt"], body.get("prompt_logprobs")
        entries = self.prompt_logprobs(ids, k or 0) if k is not None else None
        if what == "short":
            entries = entries[:-1]
        elif what == "missing_id":
            entries[-1] = {str((ids[-1] + 1) % 50): {"logprob": -1.0, "rank": 1}}
        elif what == "nan":
            entries[-1][str(ids[-1])]["logprob"] = float("nan")
        elif what == "no_logprobs":
            entries = None
        choice = {"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}
        if entries is not None:
            choice["prompt_logprobs"] = entries
        self._send(h, 200, json.dumps({"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                                       "choices": [choice]}).encode())

    def prompt_logprobs(self, ids: list[int], k: int) -> list:
        if self.model is None:  # protocol-only tests: any finite numbers will do
            lp = torch.log_softmax(torch.arange(128.0).repeat(len(ids), 1) / 10, -1)
        else:
            with self._lock, torch.no_grad():
                lp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
        out: list = [None]
        for t in range(1, len(ids)):
            row = lp[t - 1]
            order = torch.argsort(row, descending=True)
            rank = {int(v): r + 1 for r, v in enumerate(order.tolist())}
            keep = {int(v) for v in order[:k].tolist()} | {ids[t]}
            out.append({str(v): {"logprob": float(row[v]), "rank": rank[v], "decoded_token": "?"} for v in keep})
        return out

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
