"""The methods of the paper's table: SFT init, domain teachers, MOPD and the baselines."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mopd.algorithms.merge import linear_average, task_arithmetic
from mopd.config.schema import LoggingConfig, OptimConfig
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.envs.base import episode_source
from mopd.objectives.grpo import GRPOObjective
from mopd.objectives.mopd import MOPDObjective
from mopd.pipeline.config import PipelineConfig
from mopd.pipeline.stages import Domains, StageResult, evaluate, finish, load, onpolicy, train_with_curve
from mopd.rollout.episodes import run_episodes
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import Rollout
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.loop import run_onpolicy
from mopd.rollout.sample import eos_ids
from mopd.training.sft import SFTSettings, run_sft


def sft_init(cfg: PipelineConfig, doms: Domains, out: Path) -> StageResult:
    """Stage 1: one SFT checkpoint that covers every domain."""
    from mopd.models.loading import load_model, load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.base)
    model = load_model(cfg.base, tok)
    examples = [e for d in doms.train.values() for e in d]
    run_sft(model, tok, examples, OptimConfig(lr=cfg.sft.lr, steps=cfg.sft.steps, schedule="constant"),
            SFTSettings(cfg.sft.batch_size, cfg.seed), out, LoggingConfig(), name="sft init")
    return finish("SFT init", model, tok, out, 0, t0, evaluate(model, tok, cfg, doms))


def domain_teacher(cfg: PipelineConfig, doms: Domains, domain: str, init_dir: str, out: Path) -> StageResult:
    """Stage 2: GRPO on one domain from the init, with its own verifier."""
    t0 = time.perf_counter()
    model, tok = load(init_dir)
    s = cfg.teacher
    run = onpolicy(model, tok, doms, {domain: 1.0}, GRPOObjective(), s, out, cfg.seed, f"teacher {domain}")
    run_onpolicy(run)
    seqs = s.steps * s.prompts_per_step * s.rollouts_per_prompt
    return finish(f"teacher {domain}", model, tok, out, seqs, t0, evaluate(model, tok, cfg, doms))


def mopd_budget(cfg: PipelineConfig) -> int:
    return cfg.mopd.steps * cfg.mopd.prompts_per_step * cfg.mopd.rollouts_per_prompt


def mopd(cfg: PipelineConfig, doms: Domains, init_dir: str, teacher_dirs: dict[str, str], out: Path) -> StageResult:
    """Stage 3: the student samples, each domain's teacher scores, reverse KL per token."""
    t0 = time.perf_counter()
    model, tok = load(init_dir)
    teachers = {d: HFTeacher(f"teacher {d}", load(p)[0], temperature=cfg.mopd.temperature)
                for d, p in teacher_dirs.items()}
    router = TeacherRouter({t.name: t for t in teachers.values()}, {d: t.name for d, t in teachers.items()})
    run = onpolicy(model, tok, doms, doms.weights, MOPDObjective(router, cfg.algorithm), cfg.mopd, out,
                   cfg.seed, "MOPD")
    per_step = cfg.mopd.prompts_per_step * cfg.mopd.rollouts_per_prompt
    curve = train_with_curve(run, cfg.eval.curve_points, lambda: evaluate(model, tok, cfg, doms), per_step)
    return finish("MOPD", model, tok, out, mopd_budget(cfg), t0, curve[-1][1], curve)


def _grpo_steps(cfg: PipelineConfig, budget: int) -> int:
    s = cfg.teacher
    return max(1, budget // (s.prompts_per_step * s.rollouts_per_prompt))


def mix_rl(cfg: PipelineConfig, doms: Domains, init_dir: str, out: Path) -> StageResult:
    """Baseline: GRPO on the pooled prompts, each rewarded by its own domain's verifier."""
    t0 = time.perf_counter()
    model, tok = load(init_dir)
    steps = _grpo_steps(cfg, mopd_budget(cfg))
    run = onpolicy(model, tok, doms, doms.weights, GRPOObjective(), cfg.teacher, out, cfg.seed, "Mix-RL", steps)
    per_step = cfg.teacher.prompts_per_step * cfg.teacher.rollouts_per_prompt
    curve = train_with_curve(run, cfg.eval.curve_points, lambda: evaluate(model, tok, cfg, doms), per_step)
    return finish("Mix-RL", model, tok, out, steps * per_step, t0, curve[-1][1], curve)


def cascade_rl(cfg: PipelineConfig, doms: Domains, init_dir: str, out: Path) -> StageResult:
    """Baseline: GRPO on one domain after another, the budget split evenly."""
    t0 = time.perf_counter()
    model, tok = load(init_dir)
    order = cfg.cascade_order or list(doms.train)
    steps = max(1, _grpo_steps(cfg, mopd_budget(cfg)) // len(order))
    per_step = cfg.teacher.prompts_per_step * cfg.teacher.rollouts_per_prompt
    curve = []
    for i, d in enumerate(order):
        run = onpolicy(model, tok, doms, {d: 1.0}, GRPOObjective(), cfg.teacher, out / d, cfg.seed,
                       f"Cascade RL ({d})", steps)
        curve += train_with_curve(run, 1, lambda: evaluate(model, tok, cfg, doms), per_step, i * steps * per_step)
    return finish("Cascade RL", model, tok, out, len(order) * steps * per_step, t0, curve[-1][1], curve)


def offpolicy(cfg: PipelineConfig, doms: Domains, init_dir: str, teacher_dirs: dict[str, str],
              out: Path) -> StageResult:
    """Baseline: SFT of the init on teacher rollouts that the verifier accepts (same sample budget)."""
    t0 = time.perf_counter()
    budget = mopd_budget(cfg)
    total_w = sum(doms.weights.values())
    kept: list[Example | Rollout] = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for d, path in teacher_dirs.items():
        teacher, tok = load(path)
        engine = HFRolloutEngine(teacher, tok.pad_token_id, eos_ids(tok, teacher))
        n = round(budget * doms.weights[d] / total_w)
        pool = doms.train[d]
        prompts = [pool[i % len(pool)] for i in range(n)]
        for s in range(0, n, 128):
            kept += _verified_samples(engine, tok, prompts[s:s + 128], cfg, gen, doms.verifiers[d])
    model, tok = load(init_dir)
    o = cfg.offpolicy
    if kept:
        run_sft(model, tok, kept, OptimConfig(lr=o.lr, steps=o.steps, schedule="cosine", warmup_steps=5),
                SFTSettings(o.batch_size, cfg.seed), out, LoggingConfig(), name="off-policy FT")
    return finish("Off-Policy FT", model, tok, out, budget, t0, evaluate(model, tok, cfg, doms))


def _verified_samples(engine, tok, chunk: list[Example], cfg: PipelineConfig, gen,
                      verifier) -> list[Example | Rollout]:
    """The teacher's accepted samples of `chunk`: answers the verifier accepts, or, for an agentic
    domain, whole episodes played through the episode driver that earn reward 1. An episode is
    kept as the rollout itself, so SFT trains on the teacher's turns only (its gen_mask)."""
    if chunk and episode_source(chunk[0]) is not None:
        rollouts = run_episodes(engine, tok, list(enumerate(chunk)), cfg.mopd.max_new_tokens, 1.0, gen)
        return [r for r in rollouts if r.finished and r.reward >= 1.0]
    kept: list[Example | Rollout] = []
    outs = engine.generate([render_prompt(e, tok) for e in chunk], cfg.mopd.max_new_tokens, 1.0, gen)
    for e, c in zip(chunk, outs):
        text = tok.decode(c.token_ids, skip_special_tokens=True)
        if c.finished and verifier(text, e) > 0:
            kept.append(Example(domain=e.domain, prompt=e.prompt, messages=e.messages, answer=text))
    return kept


def merge(cfg: PipelineConfig, doms: Domains, init_dir: str, teacher_dirs: dict[str, str], kind: str,
          out: Path) -> StageResult:
    """Baseline: parameter merging of the teachers (plain average, or task arithmetic on the init)."""
    t0 = time.perf_counter()
    model, tok = load(init_dir)
    teachers = [load(p)[0].state_dict() for p in teacher_dirs.values()]
    if kind == "avg":
        merged, name = linear_average(teachers), "Param-Merge (average)"
    else:
        merged = task_arithmetic(model.state_dict(), teachers, cfg.task_arithmetic_scale)
        name = f"Param-Merge (task arithmetic x{cfg.task_arithmetic_scale:g})"
    model.load_state_dict(merged)
    return finish(name, model, tok, out, 0, t0, evaluate(model, tok, cfg, doms))
