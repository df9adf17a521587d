"""Qwen3-VL-MoE (Qwen3-VL-30B-A3B, 235B-A22B): Qwen3-VL whose language layers route each token to experts (fused
expert weights, a router per layer); the same processor and template."""

from __future__ import annotations

from families.qwen3_vl import ASSISTANT_PROMPT, END_OF_TURN, build as build_qwen3_vl

__all__ = ["ASSISTANT_PROMPT", "END_OF_TURN", "build"]


def build(tokenizer):
    # 4 experts of width 32, 2 per token, in the one (sparse) layer.
    moe = dict(num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    return build_qwen3_vl(tokenizer, "Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration", **moe)
