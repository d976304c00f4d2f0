"""The score a report compares, and its normalisation against the SFT init and the teacher."""

from __future__ import annotations

METRIC = "pass_at_1"


def normalised(score: float, sft: float, teacher: float) -> float:
    """(s - s_sft) / (s_teacher - s_sft): 0 at the init, 1 at the teacher; NaN when they are equal."""
    gap = teacher - sft
    return (score - sft) / gap if gap > 1e-9 else float("nan")
