"""An in-process vLLM teacher: prefill of the student's token ids with `prompt_logprobs`.

Each row of the batch is one request, `SamplingParams(max_tokens=1, prompt_logprobs=k)`
on `TokensPrompt(prompt_token_ids=...)`. vLLM answers per prompt token with `None` (first
token) or `{id: Logprob}` holding the token itself plus the top k. Anything missing or
non-finite is a TeacherError, never a zero: a silent zero would train on no signal.

vLLM's prompt log-probs skip its sampling processors, temperature included. To score at the
sampling temperature tau (as the student is scored in the update), the engine's logits
processor, which every vLLM model ends in, gets its scale multiplied by 1/tau: the prompt
log-probs are then log softmax(z / tau), exactly the student's side of the comparison.
"""

from __future__ import annotations

import math

import torch

from mopd.config.schema import VLLMOptions
from mopd.rollout.types import TokenBatch
from mopd.models.vllm_startup import VLLM_LOCK, check_head_dim, start_llm
from mopd.teachers.base import Teacher, TeacherError, TeacherScores


class VLLMTeacher(Teacher):
    def __init__(self, name: str, model_dir: str, opts: VLLMOptions | None = None, dtype: str = "float32",
                 seed: int = 0, temperature: float = 1.0):
        from transformers import AutoConfig

        self.name = name
        try:
            config = AutoConfig.from_pretrained(model_dir)
        except (OSError, ValueError):  # e.g. remote code: vLLM reads it itself, and says what is wrong
            config = None
        if config is not None:
            check_head_dim(config, f"teacher {name!r} ({model_dir})")
        self.llm = start_llm(str(model_dir), opts or VLLMOptions(), dtype, seed)
        self.temperature = temperature
        if temperature != 1.0:
            scaled = self.llm.collective_rpc(scale_logits_in_worker, args=(1.0 / temperature,))
            if not all(scaled):
                raise TeacherError(f"vLLM teacher {name!r}: its model has no vLLM logits processor to apply "
                                   f"temperature {temperature} to; use sampling.temperature 1 or kind 'hf'")

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        lens = batch.attention_mask.sum(-1).tolist()
        rows = [batch.input_ids[i, :n].tolist() for i, n in enumerate(lens)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=topk, detokenize=False)
        try:
            with VLLM_LOCK:  # the rollout engine may be generating on the loop's main thread
                outs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params,
                                         use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - any engine failure stops the step, with the teacher's name
            raise TeacherError(f"vLLM teacher {self.name!r} failed to score {len(rows)} sequences: {e!r}") from e

        B, T = batch.input_ids.shape
        lp = torch.zeros((B, T))
        ids = torch.zeros((B, T, topk), dtype=torch.long) if topk else None
        tlp = torch.zeros((B, T, topk)) if topk else None
        for i, (row, out) in enumerate(zip(rows, outs)):
            plp = out.prompt_logprobs
            if plp is None or len(plp) != len(row):
                raise TeacherError(f"vLLM teacher {self.name!r}: row {i} got "
                                   f"{None if plp is None else len(plp)} prompt log-probs for {len(row)} tokens")
            for t in batch.gen_mask[i].nonzero().flatten().tolist():
                entry, tok = plp[t], row[t]
                if not entry or tok not in entry or not math.isfinite(entry[tok].logprob):
                    raise TeacherError(f"vLLM teacher {self.name!r}: no finite log-prob for token {tok} "
                                       f"at row {i}, position {t}")
                lp[i, t] = entry[tok].logprob
                if topk:
                    ids[i, t], tlp[i, t] = self._topk(entry, tok, topk, i, t)
        return TeacherScores(lp, ids, tlp)

    def _topk(self, entry: dict, tok: int, k: int, i: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The scored token comes on top of the top k unless it is one of them: drop it then.
        items = [(v.logprob, tid) for tid, v in entry.items() if not (tid == tok and len(entry) > k)]
        if len(items) != k or not all(math.isfinite(v) for v, _ in items):
            raise TeacherError(f"vLLM teacher {self.name!r}: expected {k} finite top-k entries at row {i}, "
                               f"position {t}, got {len(items)}")
        items.sort(key=lambda x: -x[0])
        return torch.tensor([tid for _, tid in items]), torch.tensor([v for v, _ in items])


def scale_logits_in_worker(worker, factor: float) -> int:
    """Inside vLLM's worker: multiply every logits processor's scale by `factor`; how many there were."""
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    found = [m for m in worker.get_model().modules() if isinstance(m, LogitsProcessor)]
    for m in found:
        m.scale *= factor
    return len(found)
