"""Rollouts: token sequences with a mask of the tokens the model itself generated.

Only generated tokens are scored by teachers and trained on. Keeping the mask per token,
rather than a single prompt/completion split, lets multi-turn episodes (model turns
interleaved with tool or environment tokens) use the same structures unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mopd.domains.base import Example


# Padded tokens per forward on a CPU unless set (the update's optim.micro_batch_tokens, teacher
# scoring): its matmuls are as fast over ~1K positions as over more, and a whole 64 x 300-token
# batch ran 4x slower than 1K-token micro-batches (docs/benchmarks.md, "Length buckets").
CPU_MICRO_BATCH_TOKENS = 1024


def bucket_tokens(setting: int | None, device: torch.device, gpu_default: int | None = None) -> int | None:
    """The padded-token limit of a micro-batch: `setting`, else the CPU's default or `gpu_default`."""
    if setting is not None:
        return setting
    return CPU_MICRO_BATCH_TOKENS if device.type == "cpu" else gpu_default


@dataclass
class Rollout:
    domain: str
    token_ids: list[int]
    gen_mask: list[bool]
    # log mu(token_t | tokens_<t) from the rollout engine, 0.0 where gen_mask is False.
    sample_logprobs: list[float]
    prompt_len: int
    example: Example | None = None
    group: int = 0  # rollouts of the same prompt share a group (GRPO)
    finished: bool = True  # ended with EOS rather than the length limit
    reward: float | None = None
    text: str = ""  # decoded completion, special tokens stripped
    episode: Any = None  # an agentic rollout's EpisodeStats (mopd.rollout.episodes); None: single-turn

    def __post_init__(self) -> None:
        if not (len(self.token_ids) == len(self.gen_mask) == len(self.sample_logprobs)):
            raise ValueError("token_ids, gen_mask and sample_logprobs must have the same length")

    @classmethod
    def from_completion(cls, domain: str, prompt_ids: list[int], completion_ids: list[int],
                        logprobs: list[float], **kw) -> "Rollout":
        return cls(
            domain=domain,
            token_ids=list(prompt_ids) + list(completion_ids),
            gen_mask=[False] * len(prompt_ids) + [True] * len(completion_ids),
            sample_logprobs=[0.0] * len(prompt_ids) + list(logprobs),
            prompt_len=len(prompt_ids),
            **kw,
        )


@dataclass
class TokenBatch:
    """Rollouts collated into right-padded tensors [B, T].

    Per-token tensors are aligned with tokens: entry t refers to token t, predicted from
    tokens < t. Entry 0 is never a generated token.
    """

    input_ids: torch.Tensor  # long [B, T]
    attention_mask: torch.Tensor  # long [B, T]
    gen_mask: torch.Tensor  # bool [B, T]
    sample_logprobs: torch.Tensor  # float [B, T]
    domain_ids: torch.Tensor  # long [B]
    groups: torch.Tensor  # long [B]
    domains: list[str] = field(default_factory=list)  # names indexed by domain_ids
    # Each row's prompt example (None where unknown): a teacher with another tokenizer renders
    # the conversation again with its own chat template (mopd.teachers.cross_tokenizer).
    examples: list[Example | None] | None = None

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def length_buckets(self, max_rows: int, max_tokens: int | None = None) -> list[torch.Tensor]:
        """Row groups for micro-batches, shortest rows first: each of at most `max_rows` rows and,
        padded to its longest row, at most `max_tokens` tokens (a longer row goes alone). Little
        compute then goes to padding, and the matmuls stay as large (rows x positions)."""
        lengths = self.attention_mask.sum(-1)
        groups, current = [], []
        for i in torch.argsort(lengths, stable=True).tolist():
            longest = int(lengths[i])  # ascending: each newcomer is its group's longest row
            if current and (len(current) == max_rows or (max_tokens and (len(current) + 1) * longest > max_tokens)):
                groups.append(torch.tensor(current))
                current = []
            current.append(i)
        return groups + [torch.tensor(current)] if current else groups

    def select(self, rows: torch.Tensor | list[int]) -> "TokenBatch":
        """A sub-batch of `rows`, trimmed to its own longest sequence."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        length = int(self.attention_mask[rows].sum(-1).max())
        cut = lambda t: t[rows, :length]  # noqa: E731
        examples = None if self.examples is None else [self.examples[i] for i in rows.tolist()]
        return TokenBatch(cut(self.input_ids), cut(self.attention_mask), cut(self.gen_mask),
                          cut(self.sample_logprobs), self.domain_ids[rows], self.groups[rows], self.domains,
                          examples)


def collate(rollouts: list[Rollout], pad_id: int, domains: list[str] | None = None) -> TokenBatch:
    if not rollouts:
        raise ValueError("cannot collate an empty list of rollouts")
    domains = domains or sorted({r.domain for r in rollouts})
    index = {d: i for i, d in enumerate(domains)}
    B, T = len(rollouts), max(len(r.token_ids) for r in rollouts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    gen = torch.zeros((B, T), dtype=torch.bool)
    lp = torch.zeros((B, T), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        n = len(r.token_ids)
        ids[i, :n] = torch.tensor(r.token_ids)
        attn[i, :n] = 1
        gen[i, :n] = torch.tensor(r.gen_mask)
        lp[i, :n] = torch.tensor(r.sample_logprobs)
    if gen[:, 0].any():
        raise ValueError("the first token of a rollout cannot be a generated token")
    return TokenBatch(ids, attn, gen, lp,
                      torch.tensor([index[r.domain] for r in rollouts]),
                      torch.tensor([r.group for r in rollouts]), domains, [r.example for r in rollouts])
