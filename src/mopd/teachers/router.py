"""Static routing: a rollout's domain picks its teacher, or a weighted mixture of teachers.

Each teacher scores, in one call, every row of the batch whose domain it serves; the router
puts the scores back in batch order. Teachers that are loaded go first, then the others in the
order the batch needs them, so a pool of bounded memory (mopd.teachers.pool) loads each at
most once per call.

A domain routed to several teachers (`teacher: [{name, weight}, ...]`) gets one score slot per
teacher, in the config's order, and its weights normalised to sum 1; the objective turns the
slots into the weighted sum of each teacher's clipped advantage (docs/method.md, "Teacher
mixtures").

A teacher with another tokenizer (mopd.teachers.cross_tokenizer) scores character spans; when
the router has one, every slot carries span columns, one-token spans for the other teachers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mopd.rollout.types import TokenBatch
from mopd.teachers.base import Teacher, TeacherError, TeacherScores

Route = str | list[tuple[str, float]]  # one teacher, or (teacher, weight) pairs


@dataclass
class MixtureScores:
    """Per-slot scores: slot m of row b is the m-th teacher of that row's domain."""

    slots: list[TeacherScores]  # each [B, T] (and [B, T, k]); zeros where a row has no such slot
    weights: torch.Tensor  # [B, M]: each row's normalised teacher weights, 0 for missing slots
    names: list[list[str]]  # per row, the teacher of each slot


def normalised_route(route: Route) -> list[tuple[str, float]]:
    if isinstance(route, str):
        return [(route, 1.0)]
    total = sum(w for _, w in route)
    if total <= 0 or any(w < 0 for _, w in route):
        raise ValueError(f"teacher weights must be >= 0 with a positive sum, got {route}")
    return [(name, w / total) for name, w in route]


class TeacherRouter:
    def __init__(self, teachers: dict[str, Teacher], domain_to_teacher: dict[str, Route]):
        missing = {d: [n for n, _ in normalised_route(r) if n not in teachers] for d, r in domain_to_teacher.items()}
        missing = {d: names for d, names in missing.items() if names}
        if missing:
            raise ValueError(f"domains {sorted(missing)} route to teachers that were not built: "
                             f"{sorted({n for names in missing.values() for n in names})}")
        self.teachers = teachers
        self.domain_to_teacher = dict(domain_to_teacher)

    @property
    def spans(self) -> bool:
        """Whether any teacher scores by spans: then every score carries span columns. A property of
        the router, not of a batch, so that every chunk of a step has the same signals."""
        return any(t.cross_tokenizer for t in self.teachers.values())

    @property
    def mixes(self) -> bool:
        """Whether any domain routes to more than one teacher."""
        return any(len(normalised_route(r)) > 1 for r in self.domain_to_teacher.values())

    def route(self, domain: str) -> list[tuple[str, float]]:
        try:
            return normalised_route(self.domain_to_teacher[domain])
        except KeyError:
            raise TeacherError(f"no teacher for domain {domain!r}; routed domains: "
                               f"{sorted(self.domain_to_teacher)}") from None

    def teacher_for(self, domain: str) -> Teacher:
        """The first (for a single-teacher domain: the only) teacher of `domain`."""
        return self.teachers[self.route(domain)[0][0]]

    def shares(self, batch: TokenBatch) -> dict[str, list[tuple[int, int]]]:
        """teacher name -> (row, slot) pairs of the batch that it scores."""
        by_teacher: dict[str, list[tuple[int, int]]] = {}
        for row, d in enumerate(batch.domain_ids.tolist()):
            # Group by the routing key, not `teacher.name`: two teachers may share a name.
            for slot, (name, _) in enumerate(self.route(batch.domains[d])):
                by_teacher.setdefault(name, []).append((row, slot))
        return by_teacher

    def score_slots(self, batch: TokenBatch, topk: int = 0) -> MixtureScores:
        """Every teacher once, on its rows; the scores laid out per slot."""
        B, T = batch.input_ids.shape
        routes = [self.route(batch.domains[d]) for d in batch.domain_ids.tolist()]
        M = max(len(r) for r in routes)
        slots = [_zeros(B, T, topk, self.spans) for _ in range(M)]
        weights = torch.zeros((B, M))
        for row, r in enumerate(routes):
            weights[row, : len(r)] = torch.tensor([w for _, w in r])
        shares = self.shares(batch)  # in order of first appearance in the batch
        for name in sorted(shares, key=lambda n: not self.teachers[n].resident):
            pairs = shares[name]
            rows = torch.tensor([r for r, _ in pairs])
            share = batch.select(rows)
            s = self._checked(name, self.teachers[name].score(share, topk=topk), share)
            n = share.input_ids.shape[1]
            for i, (row, slot) in enumerate(pairs):
                slots[slot].logprobs[row, :n] = s.logprobs[i].float()
                if topk:
                    slots[slot].topk_ids[row, :n] = s.topk_ids[i]
                    slots[slot].topk_logprobs[row, :n] = s.topk_logprobs[i].float()
                if s.span_start is not None:
                    slots[slot].span_start[row, :n] = s.span_start[i]
                    slots[slot].span_end[row, :n] = s.span_end[i]
        return MixtureScores(slots, weights, [[n for n, _ in r] for r in routes])

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        """The scores of single-teacher routing ([B, T]); a mixture needs `score_slots`."""
        if self.mixes:
            raise TeacherError("a domain routes to a mixture of teachers: use score_slots")
        return self.score_slots(batch, topk).slots[0]

    @staticmethod
    def _checked(name: str, s: TeacherScores, share: TokenBatch) -> TeacherScores:
        if s.logprobs.shape != share.input_ids.shape:
            raise TeacherError(f"teacher {name!r} returned log-probs of shape {tuple(s.logprobs.shape)} "
                               f"for a batch of shape {tuple(share.input_ids.shape)}")
        if not torch.isfinite(s.logprobs[share.gen_mask]).all():
            raise TeacherError(f"teacher {name!r} returned non-finite log-probs")
        return s


def _zeros(B: int, T: int, topk: int, spans: bool = False) -> TeacherScores:
    own = torch.arange(T).expand(B, T).clone() if spans else None  # every token its own span
    return TeacherScores(torch.zeros((B, T)), torch.zeros((B, T, topk), dtype=torch.long) if topk else None,
                         torch.zeros((B, T, topk)) if topk else None,
                         own, own.clone() if spans else None)
