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

from mopd.config.schema import (CheckpointConfig, LoggingConfig, ModelSpec, OptimConfig, SamplingConfig)
from mopd.data.adaptive import mixture_adapter
from mopd.data.mixture import MixtureSampler
from mopd.domains.base import Example
from mopd.domains.registry import build_domain
from mopd.eval.evaluate import evaluate_domain
from mopd.models.loading import load_model, load_tokenizer, save_pretrained
from mopd.objectives.base import Objective
from mopd.pipeline.config import PipelineConfig, RLStage
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.training.loop import OnPolicyRun, run_onpolicy
from mopd.training.optim import build_optimizer
from mopd.rollout.sample import eos_ids

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
        from mopd.build import domain_data

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
    from mopd.models.lora import is_adapter_dir, load_merged

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


def onpolicy(model, tok, doms: Domains, weights: dict[str, float], objective: Objective, stage: RLStage,
             out: Path, seed: int, name: str, steps: int | None = None) -> OnPolicyRun:
    optim = OptimConfig(lr=stage.lr, steps=steps or stage.steps, warmup_steps=min(5, stage.steps // 10),
                        grad_accum_steps=stage.grad_accum_steps, max_empty_in_a_row=stage.max_empty_in_a_row)
    optimizer, scheduler = build_optimizer(model, optim)
    sampling = SamplingConfig(prompts_per_step=stage.prompts_per_step, rollouts_per_prompt=stage.rollouts_per_prompt,
                              temperature=stage.temperature, max_new_tokens=stage.max_new_tokens,
                              mixture=stage.mixture)
    return OnPolicyRun(
        model=model, tokenizer=tok, engine=HFRolloutEngine(model, tok.pad_token_id, eos_ids(tok, model)),
        sampler=MixtureSampler({d: doms.train[d] for d in weights}, weights, seed=seed), objective=objective,
        optimizer=optimizer, scheduler=scheduler, sampling=sampling, optim=optim, output_dir=out,
        checkpoint=CheckpointConfig(every=0, keep=1), logging=LoggingConfig(progress=True),
        verifiers=doms.verifiers, seed=seed, name=name, mixture=mixture_adapter(stage.mixture, weights))


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
    save_pretrained(run_model, tok, out / "model")
    return StageResult(name, str(out / "model"), sequences, time.perf_counter() - t0, scores, curve or [])
