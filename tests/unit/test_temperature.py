"""Temperature: student and teacher are compared at the sampling temperature, on both sides.

A teacher identical to the student must give advantage exactly 0 and reverse KL 0 at any
temperature; the IS ratio compares the trained policy with the sampling one, both at it.
"""

import pytest
import torch

from mopd.config.schema import AlgorithmConfig, ISCorrection, TeacherConfig
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import Rollout, collate
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.remote import RemoteTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.update import update_step


class NoStep:
    def zero_grad(self, set_to_none=True): ...
    def step(self): ...
    def get_last_lr(self): return [0.0]


def self_distill_metrics(temperature: float, teacher_temperature: float | None = None):
    """Sample at `temperature`, score with a frozen copy of the student, run one (no-op) update."""
    tok = char_tokenizer()
    student = tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    teacher = HFTeacher.frozen_copy_of("self", student, temperature=teacher_temperature or temperature)
    engine = HFRolloutEngine(student, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok(p)["input_ids"] for p in ("rev:abc=", "sort:3142=", "a:12+7=", "rev:xy=")]
    outs = engine.generate(prompts, 10, temperature, torch.Generator().manual_seed(0))
    batch = collate([Rollout.from_completion("d", p, c.token_ids, c.logprobs) for p, c in zip(prompts, outs)],
                    tok.pad_token_id)
    # IS bounds of +-1e-4: any token whose training log-prob differs from its sampling one is masked.
    algo = AlgorithmConfig(is_correction=ISCorrection(eps_low=1 - 1e-4, eps_high=1 + 1e-4))
    objective = MOPDObjective(TeacherRouter({"self": teacher}, {"d": "self"}), algo)
    signals = objective.score([], batch)
    nostep = NoStep()
    scalars, tok_metrics = update_step(student, nostep, nostep, batch, signals, objective, 2, None, temperature)
    m = batch.gen_mask
    return {k: v[m] for k, v in tok_metrics.items()}, scalars, int(m.sum())


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_a_self_teacher_gives_zero_advantage_at_any_temperature(temperature):
    tok_metrics, scalars, n = self_distill_metrics(temperature)
    assert n > 20
    assert float(tok_metrics["advantage"].abs().max()) < 1e-6
    assert float(tok_metrics["reverse_kl"].abs().max()) < 1e-6
    assert float(tok_metrics["masked"].sum()) == 0  # sampling and training log-probs agree at this temperature
    assert scalars["grad_norm"] < 1e-6


def test_a_teacher_at_another_temperature_is_not_the_student():
    # The failure the temperature plumbing prevents: a self teacher scored at 1 pulls a T=0.7 student.
    tok_metrics, _, _ = self_distill_metrics(0.7, teacher_temperature=1.0)
    assert float(tok_metrics["advantage"].abs().mean()) > 1e-2


def test_a_remote_teacher_must_score_at_the_sampling_temperature():
    cfg = TeacherConfig(name="r", kind="remote", url="http://127.0.0.1:1", served_model="m")
    with pytest.raises(ValueError, match=r"server_temperature.*logit_scale.*1\.42857"):
        RemoteTeacher.from_config(cfg, temperature=0.7)
    RemoteTeacher.from_config(cfg, temperature=1.0).close()
    hot = cfg.model_copy(update={"server_temperature": 0.7})
    RemoteTeacher.from_config(hot, temperature=0.7).close()
    with pytest.raises(ValueError, match="only apply to kind 'remote'"):
        TeacherConfig(name="s", kind="self", server_temperature=0.7)
