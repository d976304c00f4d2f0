"""Agentic episodes in every stage and format: chat templates (with and without tool support),
the tool-call parser, GRPO on trajectory rewards, `mopd check`, sampling ahead, user files."""

from __future__ import annotations

import copy

import pytest
import torch

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import OptimConfig, RunConfig, SamplingConfig
from mopd.data.mixture import MixtureSampler
from mopd.domains.base import Example
from mopd.domains.registry import build_domain
from mopd.envs.base import EpisodeLimits, ToolCall
from mopd.envs.domain import EnvDomain
from mopd.envs.format import EpisodeRenderer, ToolParseError, parse_tool_call
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.grpo import GRPOObjective
from mopd.rollout.episodes import run_episodes
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.scripted import ScriptedEngine, demonstration_rollout
from mopd.sanity import self_distillation_check
from mopd.training.ahead import RunAhead
from mopd.training.run import OnPolicyRun
from mopd.training.step import train_one_step
from mopd.training.optim import build_optimizer

LOOKUP = {"n_train": 40, "n_eval": 8}


def test_parse_tool_call_formats():
    assert parse_tool_call("42") is None
    assert parse_tool_call("call:get(abc)") == ToolCall("get", {"input": "abc"})
    assert parse_tool_call('let me see call:add({"a": 1, "b": 2})') == ToolCall("add", {"a": 1, "b": 2})
    assert parse_tool_call('<tool_call>\n{"name": "get", "arguments": {"key": "k"}}\n</tool_call>') == \
        ToolCall("get", {"key": "k"})
    assert parse_tool_call('{"name": "get", "parameters": "{\\"key\\": \\"k\\"}"}') == ToolCall("get", {"key": "k"})
    for broken in ("call:get(abc", "call:(x)", "<tool_call>{name: get}</tool_call>", 'call:get({"a": )'):
        with pytest.raises(ToolParseError):
            parse_tool_call(broken)


TOOLS_TEMPLATE = (  # a tiny template with tool support: tools in a system turn, tool results as user turns
    "{% if tools %}<|system|>tools:{% for t in tools %}{{ t['function']['name'] }} {% endfor %}<|end|>{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<eos>"
    "{% elif m['role'] == 'tool' %}<|user|>result:{{ m['content'] }}<|end|>"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_domain() -> EnvDomain:
    from mopd.domains.lookup import LookupEnvironment

    rows = [Example(domain="chat", messages=({"role": "user", "content": f"find key{i}"},), answer=str(i),
                    meta={"table": {f"key{i}": str(i)}, "key": f"key{i}"}) for i in range(3)]

    class ChatLookup(LookupEnvironment):
        def opening(self, example):
            o = super().opening(example)
            return type(o)(messages=example.messages, tools=o.tools)

    return EnvDomain("chat", rows, rows, lambda ex: ChatLookup(dict(ex.meta["table"])), EpisodeLimits(),
                     lambda ex: [f"call:get({ex.meta['key']})", ex.answer])


@pytest.mark.parametrize("with_tools", [False, True])
def test_chat_episodes_append_the_template_rendering_of_each_observation(with_tools):
    tok = char_tokenizer()
    if with_tools:
        tok.chat_template = TOOLS_TEMPLATE
    ex = chat_domain().train_examples()[1]
    r = demonstration_rollout(ex, tok)
    assert r.reward == 1.0 and r.episode.tool_calls == 1
    assert EpisodeRenderer(tok).template_tools == with_tools
    # The whole trajectory is what the template renders for the whole conversation (the model's
    # turns, then the observation as the template writes it), though only segments were rendered.
    if with_tools:
        conv = [dict(m) for m in ex.messages] + [
            {"role": "assistant", "content": "call:get(key1)"}, {"role": "tool", "content": "1"}]
        text = tok.apply_chat_template(conv, tools=[{"type": "function", "function": {"name": "get"}}],
                                       add_generation_prompt=True, tokenize=False) + "1<eos>"
    else:
        conv = [{"role": "system", "content": "You can call a tool by ending your turn with call:NAME(ARGS). "
                 "Tools:\n- get(key): the value stored under a key"}, *ex.messages,
                {"role": "assistant", "content": "call:get(key1)"}, {"role": "user", "content": "obs:1"},
                {"role": "assistant", "content": "1"}]
        text = tok.apply_chat_template(conv, tokenize=False)
    assert tok.decode(r.token_ids) == text
    model_text = tok.decode([t for t, m in zip(r.token_ids, r.gen_mask) if m])
    assert model_text == "call:get(key1)<eos>1<eos>"


def test_grpo_on_trajectory_rewards():
    """GRPO with the environment's reward: a group of right and wrong episodes gets advantages
    of both signs, and the update trains on the model's tokens."""
    tok = char_tokenizer()
    dom = build_domain("lookup", "lookup", LOOKUP)
    calls = iter(range(10**6))

    def policy(history):  # every other episode answers wrong
        text = tok.decode(history, skip_special_tokens=True)
        key, value = text[5:8], text.rsplit("obs:", 1)[-1].strip()
        return f"call:get({key})" if "obs:" not in text else (value if next(calls) % 2 else "000")

    model = tiny_model(tok, seed=1)
    optim = OptimConfig(lr=1e-3, steps=1)
    optimizer, scheduler = build_optimizer(model, optim)
    run = OnPolicyRun(model=model, tokenizer=tok, engine=ScriptedEngine(tok, policy),
                      sampler=MixtureSampler({"lookup": dom.train_examples()}, {"lookup": 1.0}),
                      objective=GRPOObjective(is_correction=None), optimizer=optimizer, scheduler=scheduler,
                      sampling=SamplingConfig(prompts_per_step=4, rollouts_per_prompt=2, max_new_tokens=16),
                      optim=optim, output_dir=None, verifiers={"lookup": dom.reward})
    m = train_one_step(run)
    assert m["reward/lookup"] == pytest.approx(0.5) and m["kept/lookup"] == 1.0 and m["grad_norm"] > 0
    assert m["turns/lookup"] == 2 and m["tool_calls/lookup"] == 1


def agentic_config(tmp_path, **extra) -> RunConfig:
    data = {"output_dir": str(tmp_path / "run"), "seed": 3, "student": {"tiny": {"seed": 1}},
            "teachers": [{"name": "t", "kind": "self"}],
            "domains": [{"name": "lookup", "prompts": {"builtin": "lookup", "params": LOOKUP}, "teacher": "t"},
                        {"name": "rev", "prompts": {"builtin": "reversal", "params": LOOKUP}, "teacher": "t"}],
            "sampling": {"prompts_per_step": 6, "max_new_tokens": 8},
            "optim": {"steps": 2, "lr": 1e-2}, "logging": {"progress": False, "jsonl": False}, **extra}
    return load_config(None, RunConfig, data=data)


def test_mopd_check_on_episodes(tmp_path):
    report = self_distillation_check(agentic_config(tmp_path))
    assert report.ok and report.tokens > 0, report


class OwnWeightsEngine(HFRolloutEngine):
    """The transformers engine on its own copy of the weights (as vLLM has), stopping turns early."""

    shares_trainer_weights = False

    def sync_weights(self, model) -> None:
        self.model.load_state_dict(model.state_dict())


ECHO_ENV = """
from mopd.envs.base import Observation, Opening
limits = {"max_turns": 3, "max_tokens": 80}
def train_examples():
    return [{"prompt": f"go:{i}="} for i in range(8)]
eval_examples = train_examples
class Echo:
    def reset(self, example):
        return Opening(prompt=example.prompt)
    def step(self, turn):
        return Observation(f"len {len(turn.text)}")
    def reward(self):
        return 0.0
def environment(example):
    return Echo()
"""


def test_sampling_ahead_plays_the_next_steps_episodes_with_the_weights_before_the_update(tmp_path):
    (tmp_path / "echo_env.py").write_text(ECHO_ENV)
    cfg = agentic_config(tmp_path)
    cfg.domains[0].prompts.builtin = f"python:{tmp_path / 'echo_env.py'}"
    cfg.domains[0].prompts.params = {}
    run = build_run(cfg)
    tok = run.tokenizer
    stops = [tok.eos_token_id] + tok.convert_tokens_to_ids(list("0123456789aeiou"))
    run.engine = OwnWeightsEngine(copy.deepcopy(run.model), tok.pad_token_id, stops)
    run.sampling = run.sampling.model_copy(update={"ahead": 1})
    before = copy.deepcopy(run.model)
    driver = RunAhead(run)
    driver.step(last=False)
    b = driver.prefetched.sampled.batch
    assert any(r.episode is not None and r.episode.turns > 1 for r in driver.prefetched.sampled.rollouts)
    from mopd.models.logprobs import token_logprobs
    with torch.no_grad():
        old = token_logprobs(before, b.input_ids, b.attention_mask, b.gen_mask).logprobs
    torch.testing.assert_close(b.sample_logprobs[b.gen_mask], old[b.gen_mask], atol=1e-5, rtol=1e-5)


def test_user_environment_file_example():
    dom = build_domain("calculator", "python:examples/calculator_env.py")
    tok = char_tokenizer()
    ex = dom.eval_examples()[0]
    r = demonstration_rollout(ex, tok)
    assert r.reward == 1.0 and r.episode.tool_calls == 1 and dom.limits.max_tokens == 96
    assert dom.reward(ex.answer, ex) == 1.0 and dom.reward("1", ex) == 0.0
    # A random model through the transformers engine: episodes end, rewards are numbers.
    model = tiny_model(tok, seed=0)
    rollouts = run_episodes(HFRolloutEngine(model, tok.pad_token_id, [tok.eos_token_id]), tok,
                            list(enumerate(dom.eval_examples()[:4])), 8)
    assert all(r.reward == 0.0 and r.episode.end for r in rollouts)
