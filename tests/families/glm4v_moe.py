"""GLM-4.5V (glm4v_moe): GLM-4.1V whose language layers route each token to experts beside a shared expert; the same
processor and template."""

from __future__ import annotations

from families.glm4v import ASSISTANT_PROMPT, END_OF_TURN, END_ONLY_LAST, build as build_glm4v

__all__ = ["ASSISTANT_PROMPT", "END_OF_TURN", "END_ONLY_LAST", "build"]


def build(tokenizer):
    # 4 routed experts of width 32 (2 per token) and one shared; the first layer is sparse (the real model keeps its first dense).
    moe = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=0,
               n_group=1, topk_group=1)
    return build_glm4v(tokenizer, "Glm4vMoeConfig", "Glm4vMoeForConditionalGeneration", **moe)
