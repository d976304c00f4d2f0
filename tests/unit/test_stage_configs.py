"""Every on-policy stage of `mopd reproduce` is a run config built from the pipeline's sections:
what a user sets on the pipeline (engine, teacher pool, device, algorithm) reaches each stage."""

from pathlib import Path

from mopd.config.load import load_config
from mopd.pipeline.config import PipelineConfig
from mopd.pipeline.presets import PRESETS
from mopd.pipeline.stages import stage_run_config


def micro(*overrides: str) -> PipelineConfig:
    return load_config(None, PipelineConfig, list(overrides), data=PRESETS["micro"]().model_dump())


def test_mopd_stage_routes_each_domain_to_its_teacher_with_the_shared_sections(tmp_path):
    cfg = micro("rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0.5", "teacher_pool.max_resident=1",
                "distributed.device=cpu", "algorithm.a_max=3", "mopd.sampling.overlap_chunks=2")
    run = stage_run_config(cfg, cfg.mopd, "init", {"reversal": 1.0, "sorting": 2.0}, tmp_path,
                           {"reversal": "t_rev", "sorting": "t_sort"})
    assert run.objective == "mopd" and run.student.path == "init" and run.output_dir == str(tmp_path)
    assert (run.rollout.engine, run.rollout.vllm.kv_cache_gb) == ("vllm", 0.5)
    assert run.teacher_pool.max_resident == 1 and run.distributed.device == "cpu"
    assert run.algorithm.a_max == 3 and run.sampling.overlap_chunks == 2
    assert {d.name: (d.teacher, d.weight) for d in run.domains} == {"reversal": ("teacher_reversal", 1.0),
                                                                   "sorting": ("teacher_sorting", 2.0)}
    assert {t.name: t.model.path for t in run.teachers} == {"teacher_reversal": "t_rev", "teacher_sorting": "t_sort"}
    assert run.optim == cfg.mopd.optim and run.sampling == cfg.mopd.sampling


def test_grpo_stage_has_no_teachers_and_its_own_step_count(tmp_path):
    cfg = micro()
    run = stage_run_config(cfg, cfg.teacher, "init", {"sorting": 1.0}, tmp_path, steps=7)
    assert run.objective == "grpo" and run.teachers == [] and [d.name for d in run.domains] == ["sorting"]
    assert run.optim.steps == 7 and cfg.teacher.optim.steps == 2  # the preset itself is unchanged
    assert run.algorithm.is_correction is None  # sampling from the trained weights: the sampler is the policy
    vllm = micro("rollout.engine=vllm")
    assert stage_run_config(vllm, vllm.teacher, "init", {"sorting": 1.0}, tmp_path).algorithm.is_correction is not None


def test_stage_sections_are_run_config_sections_with_stage_defaults():
    cfg = PipelineConfig(domains=[{"name": "reversal", "builtin": "reversal"}])
    assert (cfg.mopd.optim.steps, cfg.mopd.optim.lr, cfg.mopd.sampling.prompts_per_step) == (400, 3e-4, 32)
    assert (cfg.teacher.sampling.rollouts_per_prompt, cfg.teacher.optim.steps) == (8, 300)
    assert cfg.rollout.engine == "hf"


def test_a_stage_config_written_beside_the_stage_is_a_distill_config(tmp_path, monkeypatch):
    from mopd.config.schema import RunConfig
    from mopd.pipeline import stages

    cfg = micro()
    run_cfg = stage_run_config(cfg, cfg.teacher, str(tmp_path / "init"), {"sorting": 1.0}, tmp_path / "t")
    built = []
    monkeypatch.setattr(stages, "build_run", lambda c, name=None: built.append(c) or c)
    stages.onpolicy(run_cfg, "teacher sorting")
    saved = load_config(Path(tmp_path / "t" / "run_config.json"), RunConfig, [])
    assert saved == built[0] == run_cfg


def test_the_pipelines_precision_reaches_every_stage_with_paths_kept(tmp_path):
    cfg = micro("precision=bf16")
    run = stage_run_config(cfg, cfg.mopd, "init", {"reversal": 1.0}, tmp_path, {"reversal": "t_rev"})
    assert (run.student.path, run.student.dtype, run.optim.master_weights) == ("init", "bfloat16", True)
    assert (run.teachers[0].model.path, run.teachers[0].model.dtype) == ("t_rev", "bfloat16")
    assert run.optim.lr == cfg.mopd.optim.lr and run.sampling == cfg.mopd.sampling


def test_the_example_pipeline_file_is_the_tiny_preset_written_out():
    path = Path(__file__).parents[2] / "examples" / "pipeline_two_domains.yaml"
    written = load_config(path, PipelineConfig, ["output_dir=runs/demo"])
    preset = PRESETS["tiny"]().model_copy(update={"output_dir": "runs/demo"})
    assert written == preset


def test_a_lora_variant_trains_an_adapter_with_its_own_lr_and_the_same_budget(tmp_path):
    from mopd.pipeline.methods import mopd_budget
    from mopd.pipeline.variants import MOPDVariant, variant_config

    cfg = micro()
    v = variant_config(cfg, MOPDVariant(name="lora", lora={"r": 4, "target_modules": "all-linear"}, lr=1e-3))
    run = stage_run_config(v, v.mopd, "init", {"reversal": 1.0}, tmp_path, {"reversal": "t_rev"})
    assert run.student.lora == {"r": 4, "target_modules": "all-linear"} and run.optim.lr == 1e-3
    assert (run.optim.steps, mopd_budget(v)) == (cfg.mopd.optim.steps, mopd_budget(cfg))
    assert cfg.mopd.lora is None and stage_run_config(cfg, cfg.mopd, "init", {"reversal": 1.0}, tmp_path,
                                                      {"reversal": "t_rev"}).student.lora is None


def test_a_self_anchor_mixes_the_students_start_into_every_domains_teacher(tmp_path, monkeypatch):
    from mopd.config.schema import RunConfig
    from mopd.pipeline import stages
    from mopd.pipeline.variants import MOPDVariant, variant_config

    cfg = micro()
    v = variant_config(cfg, MOPDVariant(name="anchor", self_anchor=0.25))
    run = stage_run_config(v, v.mopd, "init", {"reversal": 1.0, "sorting": 1.0}, tmp_path / "a",
                           {"reversal": "t_rev", "sorting": "t_sort"})
    assert {t.name: t.kind for t in run.teachers} == {"teacher_reversal": "hf", "teacher_sorting": "hf", "init": "self"}
    assert {d.name: d.route for d in run.domains} == {
        "reversal": [("teacher_reversal", 0.75), ("init", 0.25)], "sorting": [("teacher_sorting", 0.75), ("init", 0.25)]}
    # The stage's run_config.json (written without defaults) still says which teacher is the `self` one.
    monkeypatch.setattr(stages, "build_run", lambda c, name=None: c)
    stages.onpolicy(run, "MOPD (anchor)")
    assert load_config(tmp_path / "a" / "run_config.json", RunConfig, []) == run


def test_self_anchor_is_refused_on_a_grpo_stage():
    import pytest

    from mopd.config.load import ConfigError

    with pytest.raises(ConfigError, match="teacher.self_anchor"):
        micro("teacher.self_anchor=0.2")
    with pytest.raises(ConfigError, match="self_anchor"):
        micro("mopd.self_anchor=1.0")  # a weight of 1 would leave the domain's teacher out
