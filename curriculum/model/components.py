"""Which parameters belong to the vision tower, the projector and the language model, and what trains."""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from curriculum.config import COMPONENTS, ConfigError, LoraConfig, Mode, TrainableConfig

# Module-name markers per component across transformers VLM families (the test matrix: LLaVA-1.5/NeXT/OneVision,
# Qwen2/2.5/3-VL, Qwen3.5, Idefics3/SmolVLM, PaliGemma, Gemma 3/4, Mistral 3, MiniCPM-V, InternVL, GLM-4V, LFM2-VL, ...). The projector is matched
# first because some families nest it inside the vision module (Qwen2-VL's `visual.merger`).
_MARKERS = {
    # LLaVA-NeXT/OneVision's image_newline is a learned embedding appended to image features; Qwen3-VL's
    # DeepStack mergers project features of inner vision layers into the language model, as its merger does;
    # Gemma 3n/4's embed_vision embeds the tower's output into the language model's space.
    # DeepSeek-VL and Janus call it the aligner; ERNIE-4.5-VL its resampler_model; PaddleOCR-VL, VideoLLaMA3 and
    # HyperCLOVA X a plain projector; BLIP-2 a Q-Former with learned query tokens and a language projection.
    "projector": (r"multi_modal_projector|mm_projector|projector|aligner|connector|merger|deepstack_merger_list|resampler\w*|"
                  r"vision_projection|language_projection|qformer|query_tokens|image_newline|embed_vision"),
    # Video-LLaVA has an image tower and a video tower (frames).
    "vision": r"vision_tower|image_tower|video_tower|vision_model|visual|vision_encoder|vpm|image_encoder",
    # BLIP's language model is its text_decoder.
    "language": r"language_model|text_model|text_decoder|lm_head|llm|embed_tokens",
}
_PATTERNS = {c: re.compile(rf"(?:^|\.)(?:{m})(?:\.|$)") for c, m in _MARKERS.items()}


# model.components of the loaded model: a per-process setting, made each time a model loads.
_extra: dict[str, re.Pattern] = {}


def use_component_patterns(patterns: dict[str, str]) -> None:
    """Regexes (model.components) tried before the built-in markers for every parameter name."""
    _extra.clear()
    _extra.update({c: re.compile(p) for c, p in patterns.items()})


def _match(param_name: str) -> tuple[str, re.Match]:
    for comp, pattern in [*_extra.items(), *((c, _PATTERNS[c]) for c in ("projector", "vision", "language"))]:
        m = pattern.search(param_name)
        if m:
            return comp, m
    leaf = param_name.split(".")[-2] if "." in param_name else param_name
    raise ConfigError(
        f"parameter {param_name} belongs to no known component (vision, projector, language) of this architecture: "
        f"map it with model.components, e.g. model.components={{projector: {leaf}}} (a regex searched in parameter names)."
    )


def component_of(param_name: str) -> str:
    """Component ('vision', 'projector' or 'language') a parameter belongs to."""
    return _match(param_name)[0]


def component_prefixes(model: torch.nn.Module) -> dict[str, list[str]]:
    """Shortest module-name prefixes that hold each component's parameters."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, _ in model.named_parameters():
        comp, m = _match(name)
        found[comp].add(name[: m.end()].rstrip("."))
    return {c: sorted(found.get(c, ())) for c in COMPONENTS}


def lora_target_regex(model: torch.nn.Module, trainable: TrainableConfig, lora: LoraConfig) -> str:
    """Regex of module names that get LoRA: the user's, or leaves inside the `lora` components."""
    if lora.target_modules:
        return lora.target_modules
    prefixes = [p for c in COMPONENTS if getattr(trainable, c) is Mode.lora for p in component_prefixes(model)[c]]
    leaves = "|".join(map(re.escape, lora.target_leaves))
    anchors = "|".join(map(re.escape, prefixes))
    return rf"^(?:{anchors})\..*\.(?:{leaves})$"


def apply_trainability(model: torch.nn.Module, trainable: TrainableConfig) -> dict[str, int]:
    """Set requires_grad per component; LoRA weights train in `lora` components. Returns trained counts."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        comp = component_of(name)
        mode = getattr(trainable, comp)
        is_lora = "lora_" in name
        # PEFT keeps the untouched original of each fully trained module beside the copy it saves.
        original = ".original_module." in name
        p.requires_grad_(not original and (mode is Mode.full and not is_lora or mode is Mode.lora and is_lora))
        if p.requires_grad:
            counts[comp] += p.numel()
    for comp in COMPONENTS:
        if getattr(trainable, comp) is not Mode.frozen and counts[comp] == 0:
            has = any(component_of(n) == comp for n, _ in model.named_parameters())
            raise ConfigError(
                f"model.trainable.{comp}={getattr(trainable, comp).value} matched no parameter: "
                + ("for lora, check model.peft.target_modules / target_leaves." if has else
                   f"this model has no {comp} parameters (e.g. BLIP's vision features go to its language model directly); "
                   f"set model.trainable.{comp}=frozen and schedule stages that train another component.")
            )
    return counts
