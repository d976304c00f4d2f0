"""An in-process transformers teacher: a frozen causal LM scoring the student's token ids.

It scores at the sampling temperature (its logits divided by it, as the student's are in the
update), so a teacher identical to the student gives advantage exactly 0 at any temperature
(docs/method.md, "Temperature").
"""

from __future__ import annotations

import copy

import torch

from mopd.models.logprobs import token_logprobs
from mopd.rollout.types import TokenBatch, bucket_tokens
from mopd.teachers.base import Teacher, TeacherScores


class HFTeacher(Teacher):
    def __init__(self, name: str, model, micro_batch_size: int = 32, chunk_size: int = 1024,
                 temperature: float = 1.0, micro_batch_tokens: int | None = None):
        self.name = name
        self.temperature = temperature
        self.model = model.eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        # Padded tokens per forward, at most; None: as the update's on a CPU, 8192 on a GPU.
        self.micro_batch_tokens = micro_batch_tokens
        self.chunk_size = chunk_size

    @classmethod
    def frozen_copy_of(cls, name: str, student, **kw) -> "HFTeacher":
        """The 'self' teacher: the student's weights as they are now, frozen. A LoRA student's is
        its base model (the adapter switched off), which shares the student's frozen weights."""
        if hasattr(student, "peft_config") and hasattr(student, "disable_adapter"):
            return AdapterOffTeacher(name, student, **kw)
        return cls(name, copy.deepcopy(student), **kw)

    def buckets(self, batch: TokenBatch, device: torch.device) -> list[torch.Tensor]:
        """The row groups `score` runs a forward over each."""
        tokens = bucket_tokens(self.micro_batch_tokens, device, gpu_default=8192)
        return batch.length_buckets(self.micro_batch_size, tokens)

    @torch.inference_mode()
    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        """Log-probs of the batch's tokens, in micro-batches of rows of similar length (completions
        of a step range from a few tokens to the limit: in arrival order most of a forward would
        run over padding)."""
        device = next(self.model.parameters()).device
        B, T = batch.input_ids.shape
        out = TeacherScores(logprobs=torch.zeros(B, T),
                            topk_ids=torch.zeros(B, T, topk, dtype=torch.long) if topk else None,
                            topk_logprobs=torch.zeros(B, T, topk) if topk else None)
        for rows in self.buckets(batch, device):
            mb = batch.select(rows)
            part = token_logprobs(self.model, mb.input_ids.to(device), mb.attention_mask.to(device),
                                  mb.gen_mask.to(device), temperature=self.temperature, topk=topk,
                                  chunk_size=self.chunk_size)
            n = mb.input_ids.shape[1]
            out.logprobs[rows, :n] = part.logprobs.float().cpu()
            if topk:
                out.topk_ids[rows, :n] = part.topk_ids.cpu()
                out.topk_logprobs[rows, :n] = part.topk_logprobs.float().cpu()
        return out


class AdapterOffTeacher(Teacher):
    """The 'self' teacher of a LoRA (peft) student: the student with its adapter disabled.

    The base weights never train, so this is exactly the base model, with no second copy in
    memory. Not an HFTeacher: the teacher pool must never offload it (that would move the
    student), and it must not freeze the model (the adapter in it trains). It scores only
    between sampling and the update (config.schema.check_self_teacher_on_lora).
    """

    def __init__(self, name: str, student, micro_batch_size: int = 32, chunk_size: int = 1024,
                 temperature: float = 1.0, micro_batch_tokens: int | None = None):
        self.name, self.model, self.temperature = name, student, temperature
        self.micro_batch_size, self.chunk_size = micro_batch_size, chunk_size
        self.micro_batch_tokens = micro_batch_tokens

    buckets = HFTeacher.buckets  # score() is HFTeacher's, with the adapter off

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        was_training = self.model.training
        self.model.eval()  # no adapter dropout, as for any teacher
        try:
            with self.model.disable_adapter():
                return HFTeacher.score(self, batch, topk=topk)
        finally:
            self.model.train(was_training)
