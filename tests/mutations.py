"""Mutation check: deliberate wiring mistakes must each make a fast test fail.

Each mutation replaces one line of the source in a copy of `src/`, and runs the fast tests
that should catch it against that copy (PYTHONPATH puts it before the installed package).
A mutation that leaves its tests green is a hole in the suite: this script then exits 1.
Run by `make test`; `python tests/mutations.py --list` shows the mutations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # under src/mopd/
    old: str
    new: str
    tests: tuple[str, ...]  # test files (under tests/) that must fail


WIRING = ("unit/test_objective_wiring.py",)
TEMPERATURE = ("unit/test_temperature.py",)
CROSS = ("unit/test_cross_tokenizer.py",)
BUCKETS = ("unit/test_length_buckets.py",)
MUTATIONS = [
    Mutation("advantage sign: clip(lp_pi - lp_T) instead of clip(lp_T - lp_pi)", "algorithms/mopd_loss.py",
             "return (lp_teacher - lp_student.detach()).clamp(-a_max, a_max)",
             "return (lp_student.detach() - lp_teacher).clamp(-a_max, a_max)", WIRING),
    Mutation("loss mask from the attention mask (trains on prompt tokens)", "objectives/mopd.py",
             "lp_pi, mask = fwd.logprobs, batch.gen_mask",
             "lp_pi, mask = fwd.logprobs, batch.attention_mask.bool()", WIRING),
    Mutation("outcome term's sign flipped", "objectives/mopd.py",
             'adv = adv + a.alpha * signals["orm_advantage"][:, None]',
             'adv = adv - a.alpha * signals["orm_advantage"][:, None]', WIRING),
    Mutation("student and teacher swapped in the top-k loss", "objectives/mopd.py",
             'topk_reverse_kl_loss(fwd.target_logprobs, signals["topk_lp_teacher"], mask',
             'topk_reverse_kl_loss(signals["topk_lp_teacher"], fwd.target_logprobs, mask', WIRING),
    Mutation("IS weights dropped from the top-k loss", "objectives/mopd.py",
             "mask, weights=w,", "mask, weights=None,", WIRING),
    Mutation("temperature dropped from the student's training log-probs", "training/update.py",
             "temperature=temperature, with_entropy=True", "temperature=1.0, with_entropy=True", TEMPERATURE),
    Mutation("temperature dropped from the teacher's log-probs", "teachers/hf_teacher.py",
             "temperature=self.temperature, topk=topk", "topk=topk", TEMPERATURE),
    Mutation("vLLM teacher's log-probs shifted by one position", "teachers/vllm_teacher.py",
             "entry, tok = plp[t], row[t]", "entry, tok = plp[t - 1], row[t]", WIRING),
    Mutation("an update with no active token still steps AdamW", "training/update.py",
             "if not dist.any(active > 0):", "if False:", ("unit/test_silent_noops.py",)),
    Mutation("ahead without IS correction accepted", "config/ahead.py",
             "    if not is_correction:", "    if False:",
             ("unit/test_silent_noops.py",)),
    Mutation("a span's advantage from each token's own log-prob, not the span's", "objectives/mopd.py",
             "adv = mopd_advantages(lp_t, lp_pi_cmp, a.a_max)", "adv = mopd_advantages(lp_t, lp_pi, a.a_max)",
             CROSS),
    Mutation("spans cut where either tokenization has a boundary, not both", "algorithms/spans.py",
             "common = sorted(set(s) & set(t))", "common = sorted(set(s) | set(t))", CROSS),
    Mutation("the student's end of sequence scored as another teacher token", "teachers/cross_tokenizer.py",
             "t_ids + [self.teacher_tok.eos_token_id]", "t_ids + [self.teacher_tok.pad_token_id]", CROSS),
    Mutation("the router drops a cross-tokenizer teacher's span columns", "teachers/router.py",
             "slots[slot].span_start[row, :n] = s.span_start[i]",
             "slots[slot].span_start[row, :n] = slots[slot].span_start[row, :n]", CROSS),
    Mutation("a teacher with another vocabulary accepted without cross_tokenizer", "build.py",
             "    if cfg.cross_tokenizer:", "    if True:", CROSS),
    Mutation("the top-k loss accepted with a cross-tokenizer teacher", "objectives/mopd.py",
             "if self.topk and router.spans:", "if False:", CROSS),
    Mutation("a teacher's length-bucketed scores written back in sorted order, not the batch's", "teachers/hf_teacher.py",
             "out.logprobs[rows, :n] = part.logprobs.float().cpu()",
             "out.logprobs[torch.sort(rows).values, :n] = part.logprobs.float().cpu()", BUCKETS),
    Mutation("a rank with fewer micro-batches than another does not split to match", "training/update.py",
             "    while len(parts) < target:", "    while False:", BUCKETS),
]


def run_tests(src: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           *[str(ROOT / "tests" / t) for t in tests]]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return res.returncode, res.stdout[-2000:] + res.stderr[-2000:]


def imported_from(src: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", "import mopd; print(mopd.__file__)"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def check(mutations: list[Mutation]) -> list[str]:
    """Names of the mutations that no test caught (or that no longer apply)."""
    holes = []
    with tempfile.TemporaryDirectory(prefix="mopd-mutations-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if not imported_from(src).startswith(str(src)):
            sys.exit("the mutated copy is not what Python imports; is mopd installed non-editable over it?")
        baseline = tuple(sorted({t for m in mutations for t in m.tests}))
        rc, out = run_tests(src, baseline)
        if rc != 0:
            sys.exit(f"the unmutated tests fail, so mutations prove nothing:\n{out}")
        for m in mutations:
            path = src / "mopd" / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                holes.append(f"{m.name}: the line to mutate is not in {m.file} exactly once (update the list)")
                continue
            t0 = time.perf_counter()
            path.write_text(original.replace(m.old, m.new))
            try:
                rc, _ = run_tests(src, m.tests)
            finally:
                path.write_text(original)
            verdict = "caught" if rc != 0 else "NOT CAUGHT"
            print(f"{verdict:>10}  {m.name}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if rc == 0:
                holes.append(m.name)
    return holes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = ap.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.file}; caught by {', '.join(m.tests)}")
        return
    holes = check(MUTATIONS)
    if holes:
        sys.exit("mutations no fast test caught:\n  " + "\n  ".join(holes))
    print(f"all {len(MUTATIONS)} mutations caught")


if __name__ == "__main__":
    main()
