"""Sample: turn a batch of examples into scored-by-verifier rollouts."""

from __future__ import annotations

import logging
import math
import threading
from typing import Callable

import torch

from mopd.config.schema import SamplingConfig
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.types import Rollout

log = logging.getLogger(__name__)
Verifier = Callable[[str, Example], float]


def eos_ids(tokenizer, model=None) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return sorted(i for i in ids if i is not None)


DEFAULT_VERIFIER_TIMEOUT_S = 30.0


def safe_reward(verifier: Verifier, text: str, example: Example,
                timeout_s: float | None = DEFAULT_VERIFIER_TIMEOUT_S) -> float:
    """The verifier's reward, or 0 (with a warning) when it raises, returns a non-number or hangs.

    A verifier bug on one sample must not kill or stall a run. The call runs in a daemon thread
    that is abandoned after `timeout_s`; verifiers that execute generated code should do so with
    `mopd.domains.sandbox.run_python`, whose subprocess is killed at its own time limit.
    """
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = float(verifier(text, example))
        except BaseException as e:  # noqa: BLE001 - SystemExit from user code included
            box["error"] = e

    if timeout_s is None:
        call()
    else:
        worker = threading.Thread(target=call, name=f"verifier-{example.domain}", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("verifier of domain %s did not finish within %.3gs; reward 0 "
                        "(raise sampling.verifier_timeout_s if it is just slow)", example.domain, timeout_s)
            return 0.0
    if "error" in box:
        log.warning("verifier of domain %s raised %r; reward 0", example.domain, box["error"])
        return 0.0
    if not math.isfinite(box["value"]):
        log.warning("verifier of domain %s returned %r; reward 0", example.domain, box["value"])
        return 0.0
    return box["value"]


def collect_rollouts(engine: RolloutEngine, tokenizer, examples: list[Example], sampling: SamplingConfig,
                     verifiers: dict[str, Verifier], generator: torch.Generator | None = None) -> list[Rollout]:
    prompts, owners = [], []
    for g, ex in enumerate(examples):
        ids = render_prompt(ex, tokenizer)
        for _ in range(sampling.rollouts_per_prompt):
            prompts.append(ids)
            owners.append((g, ex))
    completions = engine.generate(prompts, sampling.max_new_tokens, sampling.temperature, generator)
    rollouts = []
    for ids, (g, ex), c in zip(prompts, owners, completions):
        text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
        verifier = verifiers.get(ex.domain)
        reward = safe_reward(verifier, text, ex, sampling.verifier_timeout_s) if verifier is not None else None
        rollouts.append(Rollout.from_completion(ex.domain, ids, c.token_ids, c.logprobs, example=ex,
                                                group=g, finished=c.finished, reward=reward, text=text))
    return rollouts
