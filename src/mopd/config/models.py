"""The models of a run: the student, the teachers and the vLLM engines (sections of RunConfig).

Every section is a strict pydantic model (unknown keys are errors), so a typo fails at
`mopd check` time with the key's path, not an hour into a run.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter,
                      model_serializer, model_validator)

DType = Literal["float32", "bfloat16", "float16"]


def _check_lora(v: dict | None) -> dict | None:
    from mopd.models.lora import check_lora  # imports peft, only when LoRA is asked for

    return None if v is None else check_lora(v)


# peft's LoraConfig fields (checked against peft's own), or {path: ADAPTER_DIR}.
LoraOptions = Annotated[dict | None, AfterValidator(_check_lora)]


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
    lora: LoraOptions = None

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
    enforce_eager: bool = False  # True: no torch.compile / CUDA graphs (starts much faster on a CPU)
    max_model_len: int | None = Field(None, gt=0)  # None: the model's context length
    sleep: bool = True  # rollout engine: free its memory while the trainer runs, where vLLM offers it


class RolloutConfig(Strict):
    # hf: transformers sampling on the trained model itself; vllm: vLLM, weights pushed after each update.
    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)  # read by engine 'vllm' only


class _Teacher(Strict):
    """Fields every kind of teacher has; a key of another kind is refused with that kind's name."""

    name: str
    kind: str  # each kind narrows it to its own name

    @model_serializer(mode="wrap")
    def _with_kind(self, handler):
        # The union is keyed on `kind`: a dump without defaults (a stage's run_config.json) must keep it.
        return {"name": self.name, "kind": self.kind, **handler(self)}

    @model_validator(mode="before")
    @classmethod
    def _keys_of_other_kinds(cls, data):
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields)
        elsewhere = {k: [kind for kind, m in TEACHER_KINDS.items() if k in m.model_fields]
                     for k in data if k not in own}
        foreign = {k: kinds for k, kinds in elsewhere.items() if kinds}
        if foreign:
            kinds = sorted({kind for ks in foreign.values() for kind in ks})
            raise ValueError(f"teacher {data.get('name')!r} of kind {cls.model_fields['kind'].default!r}: "
                             f"{sorted(foreign)} only apply to kind {' or '.join(map(repr, kinds))}")
        return data


class _OwnTokenizer(Strict):
    """A teacher that may have another tokenizer than the student's (docs/cross_tokenizer.md)."""

    # True: the teacher's tokenizer differs from the student's; it scores the student's completions
    # as text and its log-probs are mapped back by character spans. False: it must share the
    # student's vocabulary and special tokens (checked at start).
    cross_tokenizer: bool = False
    # The teacher's chat template (a Jinja string) instead of its tokenizer's; cross_tokenizer only.
    chat_template: str | None = None

    def _check_template(self) -> None:
        if self.chat_template is not None and not self.cross_tokenizer:
            raise ValueError(f"teacher {self.name!r}: 'chat_template' needs cross_tokenizer: true (a teacher "
                             "with the student's tokenizer reads the student's prompt tokens as they are)")


def _one_model(name: str, kind: str, model: ModelSpec) -> None:
    if model.lora is not None:
        raise ValueError(f"teacher {name!r}: 'lora' applies to the student only")
    if kind == "vllm" and (model.path is None or model.gguf_file or model.tiny):
        raise ValueError(f"teacher {name!r} of kind 'vllm' needs 'model.path': a HF model directory")


class HFTeacherConfig(_OwnTokenizer, _Teacher):
    """An in-process transformers model."""

    kind: Literal["hf"] = "hf"
    model: ModelSpec

    @model_validator(mode="after")
    def _check(self) -> "HFTeacherConfig":
        _one_model(self.name, self.kind, self.model)
        self._check_template()
        return self


class SelfTeacherConfig(_Teacher):
    """The student's frozen initial weights."""

    kind: Literal["self"] = "self"


class VLLMTeacherConfig(_OwnTokenizer, _Teacher):
    """An in-process vLLM engine on `model.path`, scoring with prompt_logprobs."""

    kind: Literal["vllm"] = "vllm"
    model: ModelSpec
    vllm: VLLMOptions | None = None

    @model_validator(mode="after")
    def _check(self) -> "VLLMTeacherConfig":
        _one_model(self.name, self.kind, self.model)
        self._check_template()
        return self


class RemoteTeacherConfig(_OwnTokenizer, _Teacher):
    """A vLLM OpenAI-compatible server that returns prompt log-probs (mopd.teachers.remote)."""

    kind: Literal["remote"] = "remote"
    url: str  # e.g. http://127.0.0.1:8000 (the /v1/completions path is added)
    served_model: str  # the model name the server knows (vLLM: its --model or --served-model-name)
    # HF dir / hub id of the server's tokenizer: compared with the student's, or, with
    # cross_tokenizer, the tokenizer that renders and tokenizes what the server scores.
    tokenizer: str | None = None
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
    def _check(self) -> "RemoteTeacherConfig":
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"teacher {self.name!r} of kind 'remote' needs 'url' starting with http:// "
                             f"or https://, got {self.url!r}")
        if not self.served_model:
            raise ValueError(f"teacher {self.name!r} of kind 'remote' needs 'served_model': the model "
                             "name the server was started with")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # A key pasted here would end up in logs and checkpoints; only a variable name is allowed.
            raise ValueError(f"teacher {self.name!r}: api_key_env must be the NAME of an environment "
                             "variable (letters, digits, _), not the key itself")
        if self.cross_tokenizer and self.tokenizer is None:
            raise ValueError(f"teacher {self.name!r}: cross_tokenizer needs 'tokenizer', the server's "
                             "tokenizer, to render and tokenize what the server scores")
        self._check_template()
        return self


TEACHER_KINDS: dict[str, type[_Teacher]] = {
    "hf": HFTeacherConfig, "self": SelfTeacherConfig, "vllm": VLLMTeacherConfig, "remote": RemoteTeacherConfig}


def _kind_of(data) -> str:
    # `kind` may be left out: it defaults to 'hf', as it always has in the YAML users write.
    return data.get("kind", "hf") if isinstance(data, dict) else getattr(data, "kind", None)


AnyTeacher = Annotated[
    Union[tuple(Annotated[m, Tag(k)] for k, m in TEACHER_KINDS.items())],  # noqa: UP007
    Discriminator(_kind_of, custom_error_type="teacher_kind",
                  custom_error_message=f"'kind' must be one of {', '.join(TEACHER_KINDS)}"),
]
_TEACHER = TypeAdapter(AnyTeacher)


class TeacherConfig:
    """A teacher of any kind: a union keyed on `kind`, each kind with its own fields only.

    As a type (`list[TeacherConfig]`) it validates to the kind's model; called
    (`TeacherConfig(name=..., kind=...)`) it returns one. `kinds()` maps each kind to its model,
    for the did-you-mean of unknown keys (mopd.config.load).
    """

    def __new__(cls, **data):
        return _TEACHER.validate_python(data)

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return handler.generate_schema(AnyTeacher)

    @staticmethod
    def kinds() -> dict[str, type[BaseModel]]:
        return dict(TEACHER_KINDS)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
