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
from mopd.pipeline.config import PipelineConfig
from mopd.pipeline.stages import (Domains, StageResult, evaluate, finish, load, onpolicy, release,
                                  sampling_engine, stage_run_config, train_with_curve)
from mopd.models.loading import save_pretrained
from mopd.rollout.episodes import run_episodes
from mopd.rollout.types import Rollout
from mopd.verifiers.safe_reward import safe_reward
from mopd.training.loop import run_onpolicy
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
    run = onpolicy(stage_run_config(cfg, cfg.teacher, init_dir, {domain: 1.0}, out), f"teacher {domain}")
    run_onpolicy(run)
    model = release(run)
    seqs = cfg.teacher.optim.steps * cfg.teacher.sequences_per_step
    return finish(f"teacher {domain}", model, run.tokenizer, out, seqs, t0, evaluate(model, run.tokenizer, cfg, doms))


def mopd_budget(cfg: PipelineConfig) -> int:
    return cfg.mopd.optim.steps * cfg.mopd.sequences_per_step


def mopd(cfg: PipelineConfig, doms: Domains, init_dir: str, teacher_dirs: dict[str, str], out: Path) -> StageResult:
    """Stage 3: the student samples, each domain's teacher scores, reverse KL per token."""
    t0 = time.perf_counter()
    run = onpolicy(stage_run_config(cfg, cfg.mopd, init_dir, doms.weights, out, teacher_dirs), "MOPD")
    return _train_and_score("MOPD", run, cfg, doms, out, t0)


def _train_and_score(name: str, run, cfg: PipelineConfig, doms: Domains, out: Path, t0: float,
                     offset: int = 0) -> StageResult:
    """Train `run` to its end with a learning curve, release its engine and teachers, save the model."""
    model = run.dist.unwrap(run.model)
    per_step = run.sampling.prompts_per_step * run.sampling.rollouts_per_prompt
    curve = train_with_curve(run, cfg.eval.curve_points, lambda: evaluate(model, run.tokenizer, cfg, doms),
                             per_step, offset)
    release(run)
    return finish(name, model, run.tokenizer, out, run.optim.steps * per_step, t0, curve[-1][1], curve)


def _baseline_rl(cfg: PipelineConfig):
    return cfg.baseline_rl or cfg.teacher  # Mix-RL's and Cascade RL's GRPO settings


def _grpo_steps(cfg: PipelineConfig, budget: int) -> int:
    return max(1, budget // _baseline_rl(cfg).sequences_per_step)


def mix_rl(cfg: PipelineConfig, doms: Domains, init_dir: str, out: Path) -> StageResult:
    """Baseline: GRPO on the pooled prompts, each rewarded by its own domain's verifier."""
    t0 = time.perf_counter()
    steps = _grpo_steps(cfg, mopd_budget(cfg))
    run = onpolicy(stage_run_config(cfg, _baseline_rl(cfg), init_dir, doms.weights, out, steps=steps), "Mix-RL")
    return _train_and_score("Mix-RL", run, cfg, doms, out, t0)


def cascade_rl(cfg: PipelineConfig, doms: Domains, init_dir: str, out: Path) -> StageResult:
    """Baseline: GRPO on one domain after another, the budget split evenly."""
    t0 = time.perf_counter()
    order = cfg.cascade_order or list(doms.train)
    steps = max(1, _grpo_steps(cfg, mopd_budget(cfg)) // len(order))
    per_step = _baseline_rl(cfg).sequences_per_step
    curve, start, model, tok = [], init_dir, None, None
    for i, d in enumerate(order):
        run = onpolicy(stage_run_config(cfg, _baseline_rl(cfg), start, {d: 1.0}, out / d, steps=steps),
                       f"Cascade RL ({d})")
        model, tok = run.dist.unwrap(run.model), run.tokenizer
        curve += train_with_curve(run, 1, lambda: evaluate(model, tok, cfg, doms), per_step, i * steps * per_step)
        release(run)
        if i + 1 < len(order):  # the next domain's run starts from this one's weights
            start = str(out / d / "model")
            save_pretrained(model, tok, start)
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
        engine = sampling_engine(cfg, teacher, tok)
        n = round(budget * doms.weights[d] / total_w)
        pool = doms.train[d]
        prompts = [pool[i % len(pool)] for i in range(n)]
        for s in range(0, n, 128):
            kept += _verified_samples(engine, tok, prompts[s:s + 128], cfg, gen, doms.verifiers[d])
        engine.close()
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
        rollouts = run_episodes(engine, tok, list(enumerate(chunk)), cfg.mopd.sampling.max_new_tokens, 1.0, gen)
        return [r for r in rollouts if r.finished and r.reward >= 1.0]
    kept: list[Example | Rollout] = []
    outs = engine.generate([render_prompt(e, tok) for e in chunk], cfg.mopd.sampling.max_new_tokens, 1.0, gen)
    for e, c in zip(chunk, outs):
        text = tok.decode(c.token_ids, skip_special_tokens=True)
        if c.finished and safe_reward(verifier, text, e, cfg.verifier.timeout_s, cfg.verifier.isolation) > 0:
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
