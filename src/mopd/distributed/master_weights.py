"""AdamW over float32 master copies of a 16-bit student's weights.

A bf16 student trains its forward and backward in bf16 with no autocast casts, but its
weights cannot take the optimiser's steps themselves: a bf16 number near 0.02 moves in steps of
~1e-4, so an update of lr ~1e-6 rounds away to nothing. The optimiser therefore steps float32
copies ("master weights", as in Megatron or DeepSpeed's bf16 optimiser) and writes them back
into the model rounded to its dtype: small updates accumulate in the copies until they show.

Each step: the model's 16-bit gradients are cast into the copies' float32 gradients, AdamW
steps the copies, and the copies are written back into the model. The copies are part of the
optimiser's state_dict, so a resumed run continues from them, not from the rounded weights.
Memory: 20 bytes per parameter (16-bit weights and gradients, float32 copies and their
gradients, AdamW's two float32 moments), against 16 for a float32 student under autocast.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


class MasterWeightsAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` stepping float32 copies of `params`, written back after every step."""

    def __init__(self, params, **kw):
        self.model_params = list(params)
        self.masters = [p.detach().float().clone() for p in self.model_params]
        super().__init__(self.masters, **kw)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("MasterWeightsAdamW takes no closure")
        grads, model_grads = [], []
        for p, m in zip(self.model_params, self.masters):
            if p.grad is None:
                m.grad = None  # AdamW skips it, as it would skip p
                continue
            if m.grad is None:  # kept from step to step: a fresh 4-byte buffer each step costs more
                m.grad = torch.empty_like(m)
            grads.append(m.grad)
            model_grads.append(p.grad)
        if grads:
            torch._foreach_copy_(grads, model_grads)
        super().step()
        torch._foreach_copy_(self.model_params, self.masters)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The model's gradients; the copies' float32 gradients are overwritten at each step."""
        for p in self.model_params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    def state_dict(self) -> dict:
        # The live tensors, as torch's own state_dict hands out its moments: no copy of the model's size.
        return {**super().state_dict(), "master_weights": list(self.masters)}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights", None)
        super().load_state_dict(state_dict)
        if saved is None:  # a checkpoint of a run without master weights: start them from the model
            saved = [p.float() for p in self.model_params]
        if len(saved) != len(self.masters):
            raise ValueError(f"the checkpoint holds {len(saved)} master weights, the model has {len(self.masters)}")
        for p, m, s in zip(self.model_params, self.masters, saved):
            m.copy_(s)
            p.copy_(m)


def wants_master_weights(params: list[torch.Tensor], setting: bool | None, own_master_weights: bool) -> bool:
    """Whether the optimiser keeps float32 master weights.

    `setting` None (auto): yes when the trainable weights are 16-bit and the distributed backend
    does not keep its own (DeepSpeed's bf16 optimiser does; FSDP2 takes its mixed precision from
    its policy). True asks for them and fails where they cannot be had; False: plain AdamW on the
    weights as they are.
    """
    low = any(p.dtype in LOW_PRECISION for p in params)
    if setting is None:
        return low and not own_master_weights
    if setting and not low:
        raise ValueError("optim.master_weights: true needs a 16-bit student (student.dtype bfloat16 or "
                         "float16); a float32 student's weights are their own master copy")
    if setting and own_master_weights:
        raise ValueError("optim.master_weights: true cannot be used with DeepSpeed or FSDP2: they keep "
                         "their own master weights (DeepSpeed's bf16 optimiser; FSDP2: load the student in "
                         "float32 and set distributed.mixed_precision: bf16); leave it unset")
    return setting
