"""The stages of the experiment, each a short function over model directories.

Every RL-style stage (domain teachers, MOPD, Mix-RL, Cascade RL) is the same on-policy loop
with a different objective and prompt mixture. Each stage writes a model directory and a
`result.json`; a finished stage is read back instead of rerun.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mopd.build import build_engine, build_run, domain_data
from mopd.config.models import SelfTeacherConfig
from mopd.config.schema import (AlgorithmConfig, CheckpointConfig, DomainConfig, LoggingConfig, ModelSpec,
                                PromptSource, RunConfig, TeacherConfig, TeacherShare)
from mopd.domains.base import Example
from mopd.domains.registry import build_domain
from mopd.eval.evaluate import evaluate_domain
from mopd.models.loading import load_model, load_tokenizer, save_pretrained
from mopd.pipeline.config import PipelineConfig, RLStage
from mopd.training.loop import run_onpolicy
from mopd.training.run import OnPolicyRun

Scores = dict[str, dict[str, float]]  # domain -> {"greedy", "pass_at_1"}


@dataclass
class StageResult:
    name: str
    model_dir: str
    sequences: int  # sequences sampled by this stage (its own budget)
    seconds: float
    scores: Scores = field(default_factory=dict)
    curve: list[tuple[int, Scores]] = field(default_factory=list)  # (sequences so far, scores)


@dataclass
class Domains:
    train: dict[str, list[Example]]
    eval: dict[str, list[Example]]
    verifiers: dict[str, Callable]
    weights: dict[str, float]

    @classmethod
    def build(cls, cfg: PipelineConfig) -> "Domains":
        doms = {d.name: build_domain(d.name, d.builtin, d.params) for d in cfg.domains}
        return cls({n: d.train_examples() for n, d in doms.items()}, {n: d.eval_examples() for n, d in doms.items()},
                   {n: d.reward for n, d in doms.items()}, {d.name: d.weight for d in cfg.domains})

    @classmethod
    def from_run_config(cls, cfg) -> tuple["Domains", list[str]]:
        """The held-out splits of a `mopd distill` config's domains, and the names of those that
        have no verifier (nothing to score them with)."""
        evals, verifiers, unscored = {}, {}, []
        for d in cfg.domains:
            examples, verifier = domain_data(d, "eval")
            if verifier is None:
                unscored.append(d.name)
                continue
            evals[d.name], verifiers[d.name] = examples, verifier
        return cls({}, evals, verifiers, {d.name: d.weight for d in cfg.domains}), unscored


def cached(out: Path, fn: Callable[[], StageResult]) -> StageResult:
    marker = out / "result.json"
    if marker.is_file():
        data = json.loads(marker.read_text())
        data["curve"] = [tuple(p) for p in data.get("curve", [])]
        return StageResult(**data)
    result = fn()
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(asdict(result), indent=1))
    return result


def load(path: str | Path):
    from mopd.models.loading import load_merged
    from mopd.models.lora import is_adapter_dir

    if is_adapter_dir(path):  # a LoRA student's final/: its base with the adapter merged in
        return load_merged(path)
    spec = ModelSpec(path=str(path))
    tok = load_tokenizer(spec)
    return load_model(spec, tok), tok


def evaluate(model, tok, cfg: PipelineConfig, doms: Domains) -> Scores:
    out = {}
    for name, examples in doms.eval.items():
        s = evaluate_domain(model, tok, name, examples, doms.verifiers[name], cfg.eval.samples,
                            cfg.eval.max_new_tokens, cfg.seed)
        out[name] = {"greedy": s.greedy, "pass_at_1": s.pass_at_1}
    return out


def stage_run_config(cfg: PipelineConfig, stage: RLStage, student_dir: str, weights: dict[str, float],
                     out: Path, teacher_dirs: dict[str, str] | None = None, steps: int | None = None) -> RunConfig:
    """One on-policy stage as a `mopd distill` config: the student starts from `student_dir` and
    trains on the domains of `weights`; with `teacher_dirs` (domain -> model dir) it distills
    them (MOPD), without them it runs GRPO on the domains' verifiers."""
    by_name = {d.name: d for d in cfg.domains}
    teachers = [TeacherConfig(name=f"teacher_{d}", model=ModelSpec(path=p)) for d, p in (teacher_dirs or {}).items()]
    if teacher_dirs and stage.self_anchor:
        teachers.append(SelfTeacherConfig(name=ANCHOR))
    domains = [DomainConfig(name=d, weight=w, teacher=_teacher_of(d, stage) if teacher_dirs else None,
                            prompts=PromptSource(builtin=by_name[d].builtin, params=by_name[d].params))
               for d, w in weights.items()]
    algorithm = cfg.algorithm
    if not teacher_dirs and cfg.rollout.engine == "hf" and not stage.sampling.ahead:
        # GRPO sampling from the very weights it trains: the sampler is the policy, the IS ratio 1.
        algorithm = AlgorithmConfig(is_correction=None)
    optim = stage.optim if steps is None else stage.optim.model_copy(update={"steps": steps})
    return RunConfig(output_dir=str(out), seed=cfg.seed, objective="mopd" if teacher_dirs else "grpo",
                     precision=cfg.precision, student=ModelSpec(path=student_dir, lora=stage.lora), teachers=teachers,
                     domains=domains, algorithm=algorithm, sampling=stage.sampling, verifier=cfg.verifier, optim=optim,
                     checkpoint=CheckpointConfig(every=0, keep=1), logging=LoggingConfig(progress=True),
                     rollout=cfg.rollout, teacher_pool=cfg.teacher_pool, distributed=cfg.distributed)


ANCHOR = "init"  # the `self` teacher of a stage with a self_anchor: the student's frozen start


def _teacher_of(domain: str, stage: RLStage):
    """A domain's teacher in a MOPD stage: its own, or that mixed with the anchor."""
    if not stage.self_anchor:
        return f"teacher_{domain}"
    return [TeacherShare(name=f"teacher_{domain}", weight=1 - stage.self_anchor),
            TeacherShare(name=ANCHOR, weight=stage.self_anchor)]


def onpolicy(run_cfg: RunConfig, name: str) -> OnPolicyRun:
    """The stage's run, built by the builder of `mopd distill` (engine, teachers, sampler, optimiser).
    Its config is written beside its results: `mopd distill` on that file reruns the stage."""
    out = Path(run_cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(run_cfg.model_dump_json(indent=1, exclude_defaults=True))
    return build_run(run_cfg, name=name)


def release(run: OnPolicyRun):
    """Stop the stage's rollout engine and teachers now (an in-process vLLM engine holds memory and
    must be gone before the next stage starts its own); returns the trained model."""
    run.engine.close()  # the stage's teachers are transformers models: nothing to stop
    return run.dist.unwrap(run.model)


def sampling_engine(cfg: PipelineConfig, model, tok):
    """The pipeline's rollout engine (`rollout.engine`) sampling from `model` (off-policy data)."""
    engine = build_engine(cfg.rollout, model, tok, cfg.seed)
    engine.sync_weights(model)
    return engine

def train_with_curve(run: OnPolicyRun, points: int, on_point: Callable[[], Scores] | None,
                     seqs_per_step: int, offset: int = 0) -> list[tuple[int, Scores]]:
    """Run to the end, evaluating at `points` evenly spaced steps (the last one included)."""
    curve = []
    total = run.optim.steps
    marks = sorted({max(1, round(total * (i + 1) / points)) for i in range(points)})
    for mark in marks:
        run_onpolicy(run, stop_at=mark)
        if on_point is not None:
            curve.append((offset + mark * seqs_per_step, on_point()))
    return curve


def finish(name: str, run_model, tok, out: Path, sequences: int, t0: float, scores: Scores,
           curve=None) -> StageResult:
    from mopd.models.lora import is_peft

    if is_peft(run_model):  # every stage hands on a plain model directory (merges, next round, eval)
        run_model = run_model.merge_and_unload()
    save_pretrained(run_model, tok, out / "model")
    return StageResult(name, str(out / "model"), sequences, time.perf_counter() - t0, scores, curve or [])
