"""When `sampling.ahead: 1` can run: every rule in one place.

Checked twice with the facts known at each point: when a config is validated (the engine kind
tells whether it has its own weights; one process assumed), and when the ahead driver starts
(the built engine's `shares_trainer_weights`, the real process count).
"""

from __future__ import annotations


def ahead_problem(*, engine_shares_weights: bool, is_correction: bool, world: int = 1,
                  mixture_mode: str = "fixed", self_teacher_on_lora: bool = False) -> str | None:
    """Why `sampling.ahead: 1` cannot run with these settings, or None when it can."""
    if engine_shares_weights:
        return ("sampling.ahead: 1 needs a rollout engine with its own copy of the weights (rollout.engine "
                "'vllm'); the 'hf' engine samples from the very parameters the update is changing")
    if not is_correction:
        return ("sampling.ahead: 1 trains on batches sampled one update behind the student; without "
                "algorithm.is_correction nothing corrects for that. Set algorithm.is_correction (e.g. "
                "{eps_low: 0.5, eps_high: 2.0}) or sampling.ahead: 0")
    if mixture_mode != "fixed":
        # The next batch is drawn before this step's metrics exist: shares would change a step
        # later than in a resumed run, which must draw what the straight run drew.
        return "sampling.mixture.mode other than 'fixed' needs sampling.ahead: 0"
    if self_teacher_on_lora:
        return ("a 'self' teacher of a LoRA student scores with the student's own weights (adapter off), so it "
                "cannot score while the update runs: set sampling.ahead: 0")
    if world > 1:
        return "sampling.ahead: 1 runs in a single training process for now; use sampling.ahead: 0 with several processes"
    return None
