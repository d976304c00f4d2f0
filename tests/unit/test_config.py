import copy
from pathlib import Path

import pytest
import yaml

from mopd.config.load import ConfigError, load_config, parse_override
from mopd.config.schema import RunConfig


def base() -> dict:
    return {
        "student": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "teachers": [{"name": "me", "kind": "self"}],
        "domains": [{"name": "rev", "teacher": "me",
                     "prompts": {"builtin": "reversal", "params": {"n_train": 20, "n_eval": 5}}}],
    }


def load(data: dict, overrides=None) -> RunConfig:
    return load_config(None, RunConfig, overrides or [], data=data)


def error_of(data: dict, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load(data, overrides)
    return str(e.value)


def test_minimal_config_loads_with_defaults():
    cfg = load(base())
    assert cfg.student.tiny.hidden_size == 32
    assert cfg.teachers[0].kind == "self" and "model" not in type(cfg.teachers[0]).model_fields  # its own fields only
    d = cfg.domains[0]
    assert (d.name, d.teacher, d.weight) == ("rev", "me", 1.0)
    assert d.prompts.builtin == "reversal" and d.prompts.params == {"n_train": 20, "n_eval": 5}
    assert cfg.algorithm.loss == "sampled" and cfg.algorithm.a_max == 5.0
    assert cfg.sampling.rollouts_per_prompt == 1


def test_unknown_top_level_key_is_named():
    data = base()
    data["optimm"] = {"lr": 1.0}
    msg = error_of(data)
    assert "optimm" in msg and "unknown key" in msg


def test_unknown_nested_key_names_its_path():
    data = base()
    data["domains"][0]["prompts"]["bultin_params"] = {}
    msg = error_of(data)
    assert "domains.0.prompts.bultin_params" in msg and "unknown key" in msg
    data = base()
    data["optim"] = {"lrr": 1e-5}
    assert "optim.lrr" in error_of(data)


def test_wrong_type_names_the_key():
    data = base()
    data["optim"] = {"lr": "fast"}
    assert "optim.lr" in error_of(data)
    data = base()
    data["sampling"] = {"prompts_per_step": [4]}
    assert "sampling.prompts_per_step" in error_of(data)


def test_domain_routed_to_unknown_teacher():
    data = base()
    data["domains"][0]["teacher"] = "ghost"
    msg = error_of(data)
    assert "'ghost'" in msg and "'rev'" in msg and "me" in msg


def test_domain_without_teacher():
    data = base()
    del data["domains"][0]["teacher"]
    msg = error_of(data)
    assert "'rev'" in msg and "no teacher" in msg


def test_teacher_used_by_no_domain():
    data = base()
    data["teachers"].append({"name": "idle", "kind": "self"})
    msg = error_of(data)
    assert "idle" in msg and "used by no domain" in msg


def test_duplicate_names():
    data = base()
    data["teachers"].append({"name": "me", "kind": "self"})
    assert "teacher names must be unique" in error_of(data)
    data = base()
    data["domains"].append(copy.deepcopy(data["domains"][0]))
    msg = error_of(data)
    assert "domain names must be unique" in msg and "rev" in msg


def test_negative_weight_and_zero_sum():
    data = base()
    data["domains"][0]["weight"] = -1
    msg = error_of(data)
    assert "domains.0.weight" in msg and ">= 0" in msg
    data = base()
    data["domains"][0]["weight"] = 0
    assert "sum to zero" in error_of(data)


@pytest.mark.parametrize("ic", [{"eps_low": 1.5}, {"eps_high": 0.9}, {"eps_low": 0}, {"eps_high": -1}])
def test_is_correction_bounds(ic):
    data = base()
    data["algorithm"] = {"is_correction": ic}
    assert "algorithm.is_correction" in error_of(data)


def test_is_correction_valid_and_disabled():
    data = base()
    data["algorithm"] = {"is_correction": {"eps_low": 0.8, "eps_high": 1.25}}
    assert load(data).algorithm.is_correction.eps_high == 1.25
    data["algorithm"] = {"is_correction": None}
    assert load(data).algorithm.is_correction is None


def test_teacher_kinds_need_the_right_model_fields():
    data = base()
    data["teachers"][0] = {"name": "me", "kind": "hf"}
    assert "teachers.0.model: Field required" in error_of(data)
    data["teachers"][0] = {"name": "me", "kind": "self", "model": {"path": "x"}}
    assert "['model'] only apply to kind 'hf' or 'vllm'" in error_of(data)
    data["teachers"][0] = {"name": "me", "kind": "remote", "url": "http://h", "served_model": "m", "timeout": 3}
    assert "teachers.0.timeout: unknown key; did you mean 'timeout_s'? (keys here for kind 'remote'" in error_of(data)
    data["teachers"][0] = {"name": "me", "kind": "slef"}
    assert "teachers.0: 'kind' must be one of hf, self, vllm, remote" in error_of(data)


def test_overrides():
    data = base()
    data["domains"].append({"name": "add", "teacher": "me", "prompts": {"builtin": "addition"}})
    original = copy.deepcopy(data)
    cfg = load(data, ["optim.lr=1e-5", "domains.add.weight=2", "domains.0.teacher=me",
                      "sampling.max_new_tokens=7", "algorithm.is_correction=null",
                      "optim.betas=[0.5, 0.6]", "logging.progress=false"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert [d.weight for d in cfg.domains] == [1.0, 2.0]
    assert cfg.sampling.max_new_tokens == 7
    assert cfg.algorithm.is_correction is None
    assert cfg.optim.betas == (0.5, 0.6)
    assert cfg.logging.progress is False
    assert data == original  # the caller's dict is not modified


def test_override_by_index_can_route_to_a_new_teacher():
    data = base()
    data["teachers"] = [{"name": "x", "kind": "self"}]
    assert load(data, ["domains.0.teacher=x"]).domains[0].teacher == "x"
    # The override value is validated like the file: routing to a missing teacher fails.
    assert "'nobody'" in error_of(base(), ["domains.0.teacher=nobody"])


@pytest.mark.parametrize("bad, words", [
    ("optim.lr", "key.path=value"),
    ("=3", "empty key"),
    ("domains.9.weight=1", "no list element '9'"),
    ("domains.nosuch.weight=1", "no list element 'nosuch'"),
    ("seed.x=1", "'seed' is not a section"),
    ("domains.0.name.x=1", "'name' is not a section"),
    ("optim.betas.0.x=1", "'0' is not a section"),
])
def test_bad_override_syntax(bad, words):
    data = base()
    data["seed"] = 3
    data["optim"] = {"betas": [0.9, 0.99]}
    assert words in error_of(data, [bad])


def test_override_of_unknown_key_is_an_unknown_key():
    assert "optim.lrr" in error_of(base(), ["optim.lrr=1"])


def test_parse_override_yaml_values():
    assert parse_override("a.b=1e-5") == (["a", "b"], 1e-5)  # plain YAML would give a string
    assert parse_override("a=-2.5E+3") == (["a"], -2500.0)
    assert parse_override("a=3") == (["a"], 3)
    assert parse_override("a=1e-5x") == (["a"], "1e-5x")
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], "")


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    (cfg_dir / "data").mkdir(parents=True)
    (cfg_dir / "data" / "a.jsonl").write_text('{"prompt": "x"}\n')
    (cfg_dir / "teacher").mkdir()
    data = base()
    data["domains"] = [
        {"name": "a", "teacher": "t", "prompts": {"path": "data/a.jsonl"}},
        {"name": "b", "teacher": "t", "prompts": {"path": "./data/b.jsonl"}},
        {"name": "c", "teacher": "t", "prompts": {"path": "some-org/hub-dataset"}},
        {"name": "d", "teacher": "t", "prompts": {"path": str(tmp_path / "abs.jsonl")}},
    ]
    data["teachers"] = [{"name": "t", "kind": "hf", "model": {"path": "../configs/teacher"}}]
    path = write(cfg_dir / "run.yaml", data)
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = load_config(path, RunConfig)
    paths = [d.prompts.path for d in cfg.domains]
    assert paths[0] == str((cfg_dir / "data" / "a.jsonl").resolve())
    assert paths[1] == str((cfg_dir / "data" / "b.jsonl").resolve())
    assert paths[2] == "some-org/hub-dataset"  # a hub name is left alone
    assert paths[3] == str(tmp_path / "abs.jsonl")
    assert cfg.teachers[0].model.path == str((cfg_dir / "teacher").resolve())


def test_file_with_overrides(tmp_path):
    path = write(tmp_path / "c.yaml", base())
    cfg = load_config(path, RunConfig, ["optim.steps=3"])
    assert cfg.optim.steps == 3
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(path, RunConfig, ["optim.steps=0"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", RunConfig)
    bad = write(tmp_path / "bad.yaml", "student: {tiny: {}\nteachers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, RunConfig)
    listy = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy, RunConfig)
