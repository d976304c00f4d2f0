"""The TRL side of bench_vs_trl.py: TRL's own training loop (`trainer.train()`) in a worker
process, let through one optimiser step at a time so that it steps in turn with mopd's setups,
with its generation and its teacher's forward timed from outside."""

from __future__ import annotations

import queue
import threading
import time

import torch

from common import max_model_len, numbered_prompts, weights_moved, worker_env
from lockstep import serve


def trl_entry(conn, args, setup: str, student: str, teacher: str, prompts: str) -> None:
    """TRL's own loop (`trainer.train()`) in a thread, let through one optimiser step at a time."""
    worker_env(args, setup)
    serve(conn, lambda: TRLStepper(args, setup, student, teacher), TRLStepper.step,
          lambda t: {"weights_moved": weights_moved([(n, p, p.dtype) for n, p in t.trainer.model.named_parameters()
                                                      if p.requires_grad], student)})


class TRLStepper:
    def __init__(self, args, setup: str, student: str, teacher: str):
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DistillationConfig, DistillationTrainer

        tok = AutoTokenizer.from_pretrained(student, padding_side="left")
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]}
                                  for q, _ in numbered_prompts(args.batch) for _ in range(args.rollouts)])
        self.rows = args.batch * args.rollouts
        if self.rows % args.accum:
            raise SystemExit(f"--accum {args.accum} does not divide the step's {self.rows} rows")
        cfg = DistillationConfig(
            output_dir=str(args.work_dir / f"{setup}-run"), per_device_train_batch_size=self.rows // args.accum,
            gradient_accumulation_steps=args.accum, max_steps=10_000, learning_rate=args.lr, lr_scheduler_type="constant",
            max_grad_norm=1.0, max_completion_length=args.max_new_tokens, temperature=1.0,
            beta=1.0,  # reverse KL, as mopd; TRL's trainer is always on-policy (student-generated)
            bf16=setup in ("trl-bf16", "trl-bf16w"), gradient_checkpointing=False,  # TRL's defaults are True, True
            use_cpu=args.device == "cpu", logging_steps=10_000, save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
            use_vllm=setup.startswith("trl-vllm"), vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
            vllm_max_model_length=max_model_len(args),
        )
        attn = {"attn_implementation": args.attn} if args.attn else {}
        dtype = torch.bfloat16 if setup == "trl-bf16w" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(student, dtype=dtype, **attn)
        teacher_model = AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype, **attn)
        self.gen_s = self.teacher_s = 0.0
        self.go, self.reports = threading.Semaphore(0), queue.Queue()
        self.trainer = DistillationTrainer(model=model, teacher_model=teacher_model, args=cfg, train_dataset=data,
                                           processing_class=tok, callbacks=[self._callback()])
        if setup == "trl-vllm-reload":
            vllm = self.trainer.vllm_generation
            vllm.sync_weights = lambda: push_by_reload(vllm)
        self._time_generation_and_teacher(teacher_model)
        threading.Thread(target=self._train, daemon=True, name="trl-train").start()
        self._report()  # wait until TRL has set up its optimiser and reached its first step

    def _callback(self):
        from transformers import TrainerCallback

        outer = self

        class Lockstep(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                outer.reports.put(("ready", None))
                outer.go.acquire()

            def on_step_begin(self, args, state, control, **kw):
                outer.gen_s = outer.teacher_s = 0.0

            def on_step_end(self, args, state, control, **kw):
                tokens = round(outer.trainer._metrics["train"]["completions/mean_length"][-1] * outer.rows)
                outer.reports.put(("step", {"tokens": tokens, "generation_s": outer.gen_s,
                                            "teacher_s": outer.teacher_s}))
                outer.go.acquire()

        return Lockstep()

    def _time_generation_and_teacher(self, teacher_model) -> None:
        """Generation: wrap the trainer's generation call. Teacher: hooks on the teacher's trunk
        (TRL projects the teacher's hidden states to logits inside its loss, not counted here)."""
        inner = self.trainer._generate_single_turn

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.gen_s += time.perf_counter() - t

        self.trainer._generate_single_turn = timed
        trunk = teacher_model.base_model
        trunk.register_forward_pre_hook(lambda *a: setattr(self, "_t0", time.perf_counter()))
        trunk.register_forward_hook(lambda *a: setattr(self, "teacher_s",
                                                       self.teacher_s + time.perf_counter() - self._t0))

    def _train(self) -> None:
        try:
            self.trainer.train()
        except BaseException as e:  # noqa: BLE001 - handed to the step that waits for it
            self.reports.put(("error", e))

    def _report(self):
        kind, payload = self.reports.get()
        if kind == "error":
            raise payload
        return payload

    def step(self) -> dict:
        self.go.release()
        out = self._report()
        return out


def push_by_reload(vllm) -> None:
    """TRL's colocated weight push, through vLLM's `reload_weights`. TRL's own calls the model's
    `load_weights`, which on vLLM's CPU backend finds layers already re-packed for oneDNN
    (`'Parameter' object has no attribute 'weight_loader'`); `reload_weights` restores the loading
    layout first. The same tensors TRL would push, in one call."""
    from mopd.rollout.vllm_engine import reload_in_worker

    weights = [(name, t.detach()) for name, t in vllm._iter_named_params()]
    vllm.llm.collective_rpc(reload_in_worker, args=(weights,))
    vllm.llm.reset_prefix_cache()
