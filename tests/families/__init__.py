"""The test matrix: the two built-in tiny models and tiny random checkpoints of further VLM families.

Each family module (`families/<module>.py`) builds its model from the family's transformers config (hidden
size 32, one layer) with the built-in tokenizer plus the family's special tokens and a chat template shaped like
the family's real one, and names the template's end-of-turn token and assistant prompt. Checkpoints are saved
with save_pretrained and loaded like hub checkpoints. The README's family table is generated from FAMILIES
(readme_table; tests/test_readme.py holds the README to it).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from dataclasses import dataclass

CHATML = ("<|im_end|>", "<|im_start|>assistant")


@dataclass(frozen=True)
class Family:
    """One row of the matrix and of the README's family table."""

    name: str  # the `arch` fixture's id and the checkpoint's folder name
    title: str
    model_class: str
    batch: str  # what the batch carries, for the README
    checked: str = "all below"
    module: str | None = None  # builder module under families/; None for a built-in model (`builtin:<name>`)
    packing: str = "yes"  # data.packing: "yes", or "no: <why>" (tests/test_packing.py holds the model to it)

    @property
    def packs(self) -> bool:
        """Whether data.packing trains this family (else it is refused)."""
        return not self.packing.startswith("no")


FAMILIES = [
    Family("tiny-llava", "LLaVA-1.5 (`builtin:tiny-llava`)", "LlavaForConditionalGeneration", "4-D `pixel_values`",
           "all below, plus DDP and FSDP on 2 processes"),
    Family("tiny-llava-hf", "LLaVA-1.5, its published template's layout", "LlavaForConditionalGeneration",
           "as above; `USER: ... ASSISTANT: ...` turns with no end-of-turn token (the collator appends EOS to the last answer, "
           "supervised); `<image>` followed by the template's own newline", module="llava_hf"),
    Family("tiny-idefics3", "Idefics3 (`builtin:tiny-idefics3`)", "Idefics3ForConditionalGeneration", "5-D `pixel_values`, `pixel_attention_mask`"),
    Family("tiny-idefics3-split", "Idefics3, image splitting on", "Idefics3ForConditionalGeneration",
           "2x2 tiles + whole image, `<row_r_col_c>` markers", module="idefics3_split"),
    Family("tiny-llava-next", "LLaVA-NeXT", "LlavaNextForConditionalGeneration",
           "any-resolution crops, `image_sizes`; `image_newline` is a projector parameter", module="llava_next"),
    Family("tiny-gemma3", "Gemma 3", "Gemma3ForConditionalGeneration",
           "`token_type_ids` (bidirectional image attention); template writes BOS; images inside newline runs (labels via processed prefixes)",
           module="gemma3", packing="no: `token_type_ids` set bidirectional image attention"),
    Family("tiny-gemma4", "Gemma 4", "Gemma4ForConditionalGeneration",
           "patches `(images, patches, 3·p²)` + `image_position_ids`, `mm_token_type_ids` (bidirectional image attention); template "
           "writes BOS; the generation prompt adds an empty thought channel that training renders never carry; processor holds an "
           "audio feature extractor", module="gemma4", packing="no: `mm_token_type_ids` set bidirectional image attention"),
    Family("tiny-paligemma", "PaliGemma", "PaliGemmaForConditionalGeneration",
           "prefix-LM `token_type_ids` (0 on the prompt, attended both ways; 1 from the first answer token); its processor refuses "
           "text-only rows, so the tokenizer encodes them; no upstream chat template (ours: images, prompt, `\\n`, answer, EOS)",
           module="paligemma", packing="no: prefix-LM `token_type_ids`"),
    Family("tiny-aya-vision", "Aya Vision", "AyaVisionForConditionalGeneration",
           "crops + global view on dim 0 with `TILE_n` text markers (labels via processed prefixes); template writes BOS", module="aya_vision"),
    Family("tiny-llama4", "Llama 4", "Llama4ForConditionalGeneration",
           "one `<|image|>` per image expanded to `<|patch|>` tiles (features go to the patch tokens, pixel-shuffled); "
           "mixture-of-experts language layers with chunked attention; template writes BOS", module="llama4"),
    Family("tiny-mllama", "Llama 3.2 Vision (Mllama)", "MllamaForConditionalGeneration",
           "6-D `pixel_values`, `aspect_ratio_ids`/`_mask`, `cross_attention_mask`; one `<\\|image\\|>` token, past the LM head's rows",
           "all below (its zero-weight pass is a whole forward on a dummy sample, so the cross-attention layers take part), "
           "plus DDP on 2 processes with a text-only rank; refused with `trainer=fsdp`", module="mllama", packing="no: cross-attention layers"),
    Family("tiny-qwen2-vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration",
           "flattened patches of every image concatenated + `image_grid_thw` (3-D mRoPE positions), `mm_token_type_ids`; "
           "template adds a default system prompt", module="qwen2_vl", packing="yes, per-sample 3-D positions"),
    Family("tiny-qwen2.5-vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration",
           "as Qwen2-VL, windowed-attention vision tower (without `mm_token_type_ids` it silently falls back to 1-D positions)",
           module="qwen2_5_vl", packing="yes, per-sample 3-D positions"),
    Family("tiny-qwen3-vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration",
           "as Qwen2-VL, interleaved mRoPE and DeepStack features; no default system prompt", module="qwen3_vl", packing="yes, per-sample 3-D positions"),
    Family("tiny-qwen3.5", "Qwen3.5", "Qwen3_5ForConditionalGeneration",
           "as Qwen3-VL, linear + full attention layers; thinking template: an empty thinking block in the last answer only "
           "(turns located with stand-in renders; the model learns to close the block after the generation prompt)", module="qwen3_5", packing="no: linear-attention layers"),
    Family("tiny-minicpmv4.6", "MiniCPM-V 4.6", "MiniCPMV4_6ForConditionalGeneration",
           "every image and slice packed into one `pixel_values` `(1, 3, patch, L)` + `target_sizes`; thinking template as Qwen3.5; "
           "the processor pads left (the collator asks for right)", module="minicpmv4_6", packing="no: linear-attention layers"),
    Family("tiny-minicpmv4.7", "MiniCPM-V 4.7", "MiniCPMV4_7ForConditionalGeneration", "as MiniCPM-V 4.6, plus `mm_token_type_ids`",
           module="minicpmv4_7", packing="no: linear-attention layers"),
    Family("tiny-qwen3-vl-moe", "Qwen3-VL-MoE", "Qwen3VLMoeForConditionalGeneration",
           "as Qwen3-VL; mixture-of-experts language layers (fused expert weights, a router per layer)", module="qwen3_vl_moe",
           packing="yes, per-sample 3-D positions"),
    Family("tiny-glm4v", "GLM-4.1V", "Glm4vForConditionalGeneration",
           "flattened patches + `image_grid_thw`, `mm_token_type_ids`; template starts `[gMASK]<sop>` and closes no turn "
           "(the collator appends EOS to the last answer, supervised)", module="glm4v", packing="yes, per-sample 3-D positions"),
    Family("tiny-glm4v-moe", "GLM-4.5V", "Glm4vMoeForConditionalGeneration",
           "as GLM-4.1V; mixture-of-experts language layers with a shared expert", module="glm4v_moe", packing="yes, per-sample 3-D positions"),
    Family("tiny-lfm2-vl", "LFM2-VL", "Lfm2VlForConditionalGeneration",
           "tiles of patches (`pixel_values` `(tiles, patches, 3·p²)`), `pixel_attention_mask`, `spatial_shapes`; template writes BOS; "
           "conv + attention language model", module="lfm2_vl", packing="no: conv layers"),
    Family("tiny-llava-onevision", "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration",
           "any-resolution crops, `image_sizes`, `batch_num_images`; SigLIP features in full; images first in a turn", module="llava_onevision"),
    Family("tiny-smolvlm", "SmolVLM", "SmolVLMForConditionalGeneration",
           "tiles + global view (5-D `pixel_values`, `pixel_attention_mask`), row/column markers; `User:`/`Assistant:` turns, "
           "answers start with a space", module="smolvlm"),
    Family("tiny-internvl", "InternVL 3", "InternVLForConditionalGeneration",
           "tiles concatenated on dim 0 (count varies with aspect ratio), `<img>`/`</img>` around `<IMG_CONTEXT>` tokens", module="internvl"),
    Family("tiny-mistral3", "Mistral 3 / Pixtral", "Mistral3ForConditionalGeneration",
           "`pixel_values` padded to the largest image + `image_sizes`; `[IMG]` rows split by `[IMG_BREAK]`; template writes BOS and a "
           "default system prompt; no generation prompt (answers follow `[/INST]`)", module="mistral3"),
]
BY_NAME = {f.name: f for f in FAMILIES}
MATRIX = [f.name for f in FAMILIES]
BUILT = [f.name for f in FAMILIES if f.module]


def _module(name: str):
    return importlib.import_module(f"families.{BY_NAME[name].module}")


def family_of(path: str) -> Family:
    """The family of a tiny checkpoint's folder (built-in folders carry their builder version: tiny-llava-v1)."""
    return BY_NAME[re.sub(r"-v\d+$", "", os.path.basename(path.rstrip("/")))]


def chat_markers(path: str) -> tuple[str, str]:
    """(end-of-turn token, assistant generation prompt) of a tiny model's chat template."""
    family = family_of(path)
    if family.module is None:
        return CHATML
    module = _module(family.name)
    return module.END_OF_TURN, module.ASSISTANT_PROMPT


def supervised(path: str, *answers: str) -> list[str]:
    """What the labels of each assistant answer of one conversation decode to: the answer (after the template's own
    prefix, e.g. SmolVLM's space after `Assistant:`) and the end-of-turn token."""
    family = family_of(path)
    module = _module(family.name) if family.module else None
    prefix = getattr(module, "ANSWER_PREFIX", "")
    # Thinking templates: the answer after the last user turn starts with the rest of an empty thinking block.
    last = getattr(module, "LAST_ANSWER_PREFIX", "")
    end, _ = chat_markers(path)
    ends = [""] * (len(answers) - 1) + [end] if getattr(module, "END_ONLY_LAST", False) else [end] * len(answers)
    return [f"{last if k == len(answers) - 1 else ''}{prefix}{a}{e}" for k, (a, e) in enumerate(zip(answers, ends))]


def generation_suffix(path: str) -> str:
    """What the generation prompt adds after the assistant header that training renders do not carry (Gemma 4's empty thought channel)."""
    family = family_of(path)
    return getattr(_module(family.name), "GENERATION_SUFFIX", "") if family.module else ""


def image_token_id(path: str) -> int:
    """The id of the tokens an image expands to, from the model's config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return next(v for v in (getattr(config, "image_token_id", None), getattr(config, "image_token_index", None)) if isinstance(v, int))


def ensure_family(name: str, cache_dir: str, tokenizer_from: str) -> str:
    """Folder of the tiny `name` checkpoint (built once per cache, under a lock), with the tokenizer of `tokenizer_from`."""
    import torch
    from filelock import FileLock
    from transformers import AutoTokenizer

    folder = os.path.join(cache_dir, "families", name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        if not os.path.isfile(os.path.join(folder, "config.json")):
            torch.manual_seed(0)
            model, processor = _module(name).build(AutoTokenizer.from_pretrained(tokenizer_from))
            shutil.rmtree(folder, ignore_errors=True)
            model.save_pretrained(folder + ".tmp")
            processor.save_pretrained(folder + ".tmp")
            os.replace(folder + ".tmp", folder)
    return folder


def readme_table() -> str:
    """The README's table of tested families."""
    lines = ["| family | model class | what the batch carries | checked | packing |", "|---|---|---|---|---|"]
    lines += [f"| {f.title} | `{f.model_class}` | {f.batch} | {f.checked} | {f.packing} |" for f in FAMILIES]
    return "\n".join(lines)
