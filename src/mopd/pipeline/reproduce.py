"""`mopd reproduce`: SFT init -> domain teachers -> MOPD -> every baseline -> report.

Each stage is cached in its own directory, so a rerun resumes after the last finished stage.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from mopd.eval.report import write_report
from mopd.pipeline import methods as M
from mopd.pipeline.config import PipelineConfig
from mopd.pipeline.stages import Domains, StageResult, cached
from mopd.pipeline.variants import variant_config

log = logging.getLogger(__name__)


def reproduce(cfg: PipelineConfig, out_dir: str | Path | None = None) -> str:
    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(cfg.model_dump_json(indent=1))
    doms = Domains.build(cfg)

    log.info("stage 1: SFT init")
    sft = cached(out / "sft", lambda: M.sft_init(cfg, doms, out / "sft"))
    warn_if_unsolved("the SFT init", sft, doms.train)
    first_teachers: dict[str, StageResult] = {}
    methods: list[StageResult] = []
    start = sft.model_dir
    for rnd in range(1, cfg.rounds + 1):
        tag = "" if rnd == 1 else f"_round{rnd}"
        log.info("stage 2%s: domain teachers from %s", tag, start)
        teachers = {d: cached(out / f"teacher_{d}{tag}",
                              lambda d=d: M.domain_teacher(cfg, doms, d, start, out / f"teacher_{d}{tag}"))
                    for d in doms.train}
        for d, t in teachers.items():
            warn_if_unsolved(f"the {d} teacher", t, [d])
        first_teachers = first_teachers or teachers
        log.info("stage 3%s: MOPD", tag)
        dirs = {d: t.model_dir for d, t in teachers.items()}
        student = cached(out / f"mopd{tag}", lambda: M.mopd(cfg, doms, start, dirs, out / f"mopd{tag}"))
        if rnd > 1:
            student.name = f"MOPD (round {rnd})"
        methods.append(student)
        start = student.model_dir  # co-evolution: the next round starts from this student

    base = sft.model_dir
    t1 = {d: t.model_dir for d, t in first_teachers.items()}
    runners = {
        "mix_rl": lambda: M.mix_rl(cfg, doms, base, out / "mix_rl"),
        "cascade_rl": lambda: M.cascade_rl(cfg, doms, base, out / "cascade_rl"),
        "offpolicy": lambda: M.offpolicy(cfg, doms, base, t1, out / "offpolicy"),
        "merge_task": lambda: M.merge(cfg, doms, base, t1, "task", out / "merge_task"),
        "merge_avg": lambda: M.merge(cfg, doms, base, t1, "avg", out / "merge_avg"),
    }
    for name in cfg.baselines:
        log.info("baseline: %s", name)
        methods.append(cached(out / name, runners[name]))
    methods += run_variants(cfg, doms, base, t1, out)
    summary = {"sft": asdict(sft), "teachers": {d: asdict(t) for d, t in first_teachers.items()},
               "methods": [asdict(m) for m in methods],
               "eval_prompts": {d: len(e) for d, e in doms.eval.items()}, "eval_samples": cfg.eval.samples}
    return write_report(out, summary)


def warn_if_unsolved(who: str, result: StageResult, domains) -> None:
    """A model that solves none of a domain's held-out prompts gives GRPO nothing to learn from
    there (every group at reward 0): say so now, with the knob, rather than after the stage."""
    for d in domains:
        s = result.scores.get(d)
        if s is not None and s["greedy"] == 0 and s["pass_at_1"] == 0:
            log.warning("%s solves none of domain %r's held-out prompts (greedy 0, pass@1 0): GRPO on it "
                        "sees reward 0 in every group and learns nothing. Train the init longer (sft.steps), "
                        "make the domain easier, or sample more per prompt (teacher.sampling.rollouts_per_prompt); "
                        "a stage stops after teacher.optim.max_empty_in_a_row steps without signal.", who, d)


def run_variants(cfg: PipelineConfig, doms: Domains, init_dir: str, teacher_dirs: dict[str, str], out: Path) -> list:
    """Each MOPD variant on the same init and teachers as plain MOPD (pipeline/variants.py)."""
    results = []
    for v in cfg.variants:
        vcfg = variant_config(cfg, v)
        res = cached(out / f"mopd_{v.name}", lambda: M.mopd(vcfg, doms, init_dir, teacher_dirs, out / f"mopd_{v.name}"))
        res.name = f"MOPD ({v.name})"
        results.append(res)
    return results
