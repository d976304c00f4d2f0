"""The models of a run: the student, the teachers and the vLLM engines (sections of RunConfig).

Every section is a strict pydantic model (unknown keys are errors), so a typo fails at
`mopd check` time with the key's path, not an hour into a run.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["float32", "bfloat16", "float16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModel(Strict):
    """Build a randomly initialised tiny Llama with the character tokenizer (tests, demo)."""

    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    seed: int = 0


class ModelSpec(Strict):
    """Where a model comes from: a HF directory or hub id, a GGUF file, or a tiny build."""

    path: str | None = None
    gguf_file: str | None = None
    tiny: TinyModel | None = None
    dtype: DType = "float32"
    trust_remote_code: bool = False
    # transformers' attention kernel ("sdpa", "eager", "flash_attention_2"...); None: its default.
    # On a CPU, "eager" trains short sequences faster than "sdpa" (docs/benchmarks.md).
    attn_implementation: str | None = None
    # Students only: train a LoRA adapter (peft's LoraConfig fields), or {path: ADAPTER_DIR} to
    # continue an existing one (mopd.models.lora, docs/lora.md).
    lora: dict | None = None

    @field_validator("lora")
    @classmethod
    def _lora_keys(cls, v: dict | None) -> dict | None:
        from mopd.models.lora import check_lora  # imports peft, only when LoRA is asked for

        return None if v is None else check_lora(v)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if self.tiny is not None and (self.path or self.gguf_file):
            raise ValueError("give either 'tiny' or 'path'/'gguf_file', not both")
        if self.tiny is None and not self.path and not self.gguf_file:
            raise ValueError("a model needs 'path' (HF directory or hub id), 'gguf_file' or 'tiny'")
        return self


class VLLMOptions(Strict):
    """A vLLM engine in the training process (`rollout.engine: vllm`, teachers of kind 'vllm')."""

    dtype: DType | None = None  # None: the model's own dtype (float32 makes log-probs match the trainer's)
    # On a CPU this is the share of RAM vLLM reserves; in-process it also counts the trainer's memory.
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    kv_cache_gb: float | None = Field(None, gt=0)  # an explicit KV-cache size; overrides the share above
    enforce_eager: bool = False  # True: no torch.compile / CUDA graphs (starts ~4x faster on a CPU)
    max_model_len: int | None = Field(None, gt=0)  # None: the model's context length
    sleep: bool = True  # rollout engine: free its memory while the trainer runs, where vLLM offers it


class RolloutConfig(VLLMOptions):
    # hf: transformers sampling on the trained model itself; vllm: vLLM, weights pushed after each update.
    engine: Literal["hf", "vllm"] = "hf"


class TeacherConfig(Strict):
    name: str
    # hf: an in-process transformers model; self: the student's frozen initial weights;
    # remote: a vLLM OpenAI-compatible server that returns prompt log-probs (mopd.teachers.remote).
    # vllm: an in-process vLLM engine on `model.path` scoring with prompt_logprobs.
    kind: Literal["hf", "self", "remote", "vllm"] = "hf"
    model: ModelSpec | None = None
    vllm: VLLMOptions | None = None  # kind 'vllm' only
    # kind 'remote' only:
    url: str | None = None  # e.g. http://127.0.0.1:8000 (the /v1/completions path is added)
    served_model: str | None = None  # the model name the server knows (vLLM: its --model or --served-model-name)
    tokenizer: str | None = None  # optional HF dir / hub id of the server's tokenizer, compared with the student's
    api_key_env: str | None = None  # NAME of the environment variable holding the API key, never the key
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    concurrency: int = Field(8, gt=0)
    # The temperature the server's prompt log-probs are taken at; must equal sampling.temperature.
    # vLLM ignores a request's temperature for prompt log-probs: 1 for a plain server, T for one
    # started with --hf-overrides '{"logit_scale": 1/T}' (Llama-family models).
    server_temperature: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "TeacherConfig":
        if self.kind in ("hf", "vllm") and self.model is None:
            raise ValueError(f"teacher {self.name!r} of kind {self.kind!r} needs 'model'")
        if self.kind == "vllm" and (self.model.path is None or self.model.gguf_file or self.model.tiny):
            raise ValueError(f"teacher {self.name!r} of kind 'vllm' needs 'model.path': a HF model directory")
        if self.kind != "vllm" and self.vllm is not None:
            raise ValueError(f"teacher {self.name!r}: 'vllm' only applies to kind 'vllm'")
        if self.model is not None and self.model.lora is not None:
            raise ValueError(f"teacher {self.name!r}: 'lora' applies to the student only")
        if self.kind in ("self", "remote") and self.model is not None:
            raise ValueError(f"teacher {self.name!r} of kind {self.kind!r} takes no 'model'")
        remote_only = [k for k in ("url", "served_model", "tokenizer", "api_key_env") if getattr(self, k) is not None]
        if self.server_temperature != 1.0:
            remote_only.append("server_temperature")
        if self.kind != "remote" and remote_only:
            raise ValueError(f"teacher {self.name!r}: {remote_only} only apply to kind 'remote'")
        if self.kind == "remote":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(f"teacher {self.name!r} of kind 'remote' needs 'url' starting with http:// "
                                 f"or https://, got {self.url!r}")
            if not self.served_model:
                raise ValueError(f"teacher {self.name!r} of kind 'remote' needs 'served_model': the model "
                                 "name the server was started with")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # A key pasted here would end up in logs and checkpoints; only a variable name is allowed.
            raise ValueError(f"teacher {self.name!r}: api_key_env must be the NAME of an environment "
                             "variable (letters, digits, _), not the key itself")
        return self


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
