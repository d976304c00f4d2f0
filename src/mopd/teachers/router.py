"""Static routing: a rollout's domain picks exactly one teacher.

Each teacher scores its share of the batch in one call; the router puts the scores back
in batch order. Teachers that are loaded go first, then the others in the order the batch
needs them, so a pool of bounded memory (mopd.teachers.pool) loads each at most once per call.
"""

from __future__ import annotations

import torch

from mopd.rollout.types import TokenBatch
from mopd.teachers.base import Teacher, TeacherError, TeacherScores


class TeacherRouter:
    def __init__(self, teachers: dict[str, Teacher], domain_to_teacher: dict[str, str]):
        missing = [d for d, t in domain_to_teacher.items() if t not in teachers]
        if missing:
            raise ValueError(f"domains {missing} route to teachers that were not built: "
                             f"{sorted({domain_to_teacher[d] for d in missing})}")
        self.teachers = teachers
        self.domain_to_teacher = dict(domain_to_teacher)

    def teacher_for(self, domain: str) -> Teacher:
        try:
            return self.teachers[self.domain_to_teacher[domain]]
        except KeyError:
            raise TeacherError(f"no teacher for domain {domain!r}; routed domains: "
                               f"{sorted(self.domain_to_teacher)}") from None

    def shares(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
        """teacher name -> row indices of the batch that it scores."""
        by_teacher: dict[str, list[int]] = {}
        for row, d in enumerate(batch.domain_ids.tolist()):
            self.teacher_for(batch.domains[d])  # TeacherError for an unrouted domain
            # Group by the routing key, not `teacher.name`: two teachers may share a name.
            by_teacher.setdefault(self.domain_to_teacher[batch.domains[d]], []).append(row)
        return {name: torch.tensor(rows) for name, rows in by_teacher.items()}

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        B, T = batch.input_ids.shape
        lp = torch.zeros((B, T))
        ids = torch.zeros((B, T, topk), dtype=torch.long) if topk else None
        tlp = torch.zeros((B, T, topk)) if topk else None
        shares = self.shares(batch)  # in order of first appearance in the batch
        for name in sorted(shares, key=lambda n: not getattr(self.teachers[n], "resident", True)):
            rows = shares[name]
            share = batch.select(rows)
            s = self.teachers[name].score(share, topk=topk)
            n = share.input_ids.shape[1]
            if s.logprobs.shape != share.input_ids.shape:
                raise TeacherError(f"teacher {name!r} returned log-probs of shape {tuple(s.logprobs.shape)} "
                                   f"for a batch of shape {tuple(share.input_ids.shape)}")
            if not torch.isfinite(s.logprobs[share.gen_mask]).all():
                raise TeacherError(f"teacher {name!r} returned non-finite log-probs")
            lp[rows, :n] = s.logprobs.float()
            if topk:
                ids[rows, :n] = s.topk_ids
                tlp[rows, :n] = s.topk_logprobs.float()
        return TeacherScores(lp, ids, tlp)
