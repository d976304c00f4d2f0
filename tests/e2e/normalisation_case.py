"""The batch and objectives of the token-normalisation test, shared by the test and its workers."""

from __future__ import annotations

import torch

from mopd.config.schema import AlgorithmConfig
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.grpo import GRPOObjective
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.types import Rollout, collate
from mopd.teachers.router import TeacherRouter

# (group, reward, completion length): rows 0-1 (rank 0) are long, rows 2-3 (rank 1) short.
ROWS = [(0, 1.0, 14), (1, 0.0, 11), (0, 0.0, 1), (1, 1.0, 2)]

OBJECTIVES = {
    "mopd_token": lambda: MOPDObjective(TeacherRouter({}, {}), AlgorithmConfig(normalization="token",
                                                                               is_correction=None)),
    "mopd_sequence": lambda: MOPDObjective(TeacherRouter({}, {}), AlgorithmConfig(is_correction=None)),
    "grpo": lambda: GRPOObjective(is_correction=None),
}


def student():
    return tiny_model(char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, seed=5)


def fixed_batch(objective: str):
    g = torch.Generator().manual_seed(0)
    rollouts = [Rollout.from_completion("d", [5, 6, 7], torch.randint(8, 60, (n,), generator=g).tolist(),
                                        [-1.0] * n, group=grp, reward=r) for grp, r, n in ROWS]
    batch = collate(rollouts, 0)
    if objective == "grpo":
        return batch, GRPOObjective(is_correction=None).score(rollouts, batch)
    return batch, {"lp_teacher": torch.randn(batch.input_ids.shape, generator=g) - 2.0}
