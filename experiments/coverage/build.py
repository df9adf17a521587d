"""Build a tiny random checkpoint + processor for one image-text-to-text model type, from its default config.

    .venv/bin/python experiments/coverage/build.py <model_type> <out folder>

Generic, not per family: the type's default config is walked (top level and every sub-config) and its size keys
are shrunk to one width (64), one FFN width (128), 2 layers, 2 heads, 4 experts; vision towers get a small image
size (4 patches a side); the vocabulary is the built-in tiny tokenizer's (builtin:tiny-llava) plus every special
token the type's processor module names. The processor is the type's processor class built from that tokenizer,
the type's image (video, audio) processor shrunk the same way, and a generic ChatML-like template (transformers
ships no chat templates: they live in hub repos). Processor keywords the type needs (patch size, image sequence
length...) are filled from the config, and a short search over the few that cannot be derived (image placeholder
token, extra image tokens, image sequence length) keeps the first combination that passes the self-check.

Self-check (the harness's own gate: a failure here is a builder gap, not a curriculum problem): the processor
encodes one image+text conversation and one text-only conversation, the model runs both forwards with labels,
and generates 2 tokens on the image prompt. Writes <out>/build.json with what was chosen.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import os
import re
import sys
import tempfile
import traceback

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from curriculum.model.builtin import _CHAT_TEMPLATE as CHATML_TEMPLATE  # noqa: E402

WIDTH, FFN, LAYERS, HEADS, EXPERTS, TOPK = 64, 128, 2, 2, 4, 2
# A few per-type settings that generic shrinking cannot find (keep this short).
OVERRIDES: dict[str, dict] = {
    "molmo2": {"patches": 10},
    # the pixel-shuffle adapter's input is hidden / ratio² = 4 x 64, read from the vision FFN width
    "llama4": {"set": {"vision_config.intermediate_size": 4 * WIDTH}},  # overlapping crops need more than 2 x overlap_margins (4) patches a side
}

# The built-in models' ChatML template; {IMAGE} becomes the type's image placeholder.
GENERIC_TEMPLATE = CHATML_TEMPLATE

LAYER_KEYS = re.compile(r"^(num_hidden_layers|num_layers|depth|n_layers?|encoder_layers|decoder_layers|num_encoder_layers|"
                        r"num_decoder_layers|\w+_num_layers|num_\w+_layers|\w+_depth)$")
WIDTH_KEYS = re.compile(r"^(hidden_size|d_model|embed_dim|n_embd|hidden_dim|\w+_hidden_size|\w+_embed_dim|projection_dim|proj_dim|"
                        r"\w+_hidden_dim|out_hidden_size|vision_output_dim|output_dim|\w+_output_dim|\w+_input_dim|d_kv_latent)$")
FFN_KEYS = re.compile(r"^(intermediate_size|ffn_dim|mlp_dim|n_inner|\w+_intermediate_size|\w+_ffn_dim|encoder_ffn_dim|decoder_ffn_dim)$")
HEAD_KEYS = re.compile(r"^(num_attention_heads|num_heads|n_heads?|encoder_attention_heads|decoder_attention_heads|"
                       r"num_key_value_heads|n_kv_heads|num_kv_heads|\w+_num_heads|\w+_attention_heads)$")
EXPERT_KEYS = re.compile(r"^(num_experts|n_routed_experts|num_local_experts|moe_num_experts|\w+_num_experts)$")
TOPK_KEYS = re.compile(r"^(num_experts_per_tok|moe_topk|moe_k|top_k|num_experts_per_token)$")
SKIP = re.compile(r"max_|position|vocab|window|patch|image|token|chunk|seq|rope|codebook|num_labels|bucket|sample|mel|audio_")
# Per-layer lists that follow the layer count; index lists into the layers are clamped.
LIST_PER_LAYER = re.compile(r"^(layer_types|\w+_pattern|no_rope_layers|mlp_only_layers|\w+_per_layer|layers_block_type)$")
INDEX_LISTS = re.compile(r"^(deepstack_visual_indexes|vision_feature_layers?|out_indices|\w+_layer_ids|\w+_layer_indexes|"
                         r"vision_feature_layer|fullatt_block_indexes|intermediate_layers_indices|\w+_layers_indices)$")


def sub_configs(config):
    """(name, sub-config) of every PretrainedConfig below `config`, depth first."""
    from transformers import PretrainedConfig

    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            yield key, value
            yield from sub_configs(value)


def _scale_section(section: list[int], half: int) -> list[int]:
    total = sum(section)
    new = [max(1, x * half // total) for x in section]
    new[-1] += half - sum(new)
    return new


def _mrope_default(config) -> list[int] | None:
    """The mrope_section the type's modeling code uses when its config names none."""
    try:
        source = inspect.getsource(sys.modules[type(config).__module__.replace(".configuration_", ".modeling_")]) if False else ""
        import importlib

        source = inspect.getsource(importlib.import_module(type(config).__module__.replace(".configuration_", ".modeling_")))
    except Exception:  # noqa: BLE001
        return None
    m = re.search(r"[\"']mrope_section[\"'],\s*(\[[0-9, ]+\])", source)
    return json.loads(m.group(1)) if m else ([16, 24, 24] if "mrope_section" in source else None)


def shrink(config, vocab: int, image_size_for) -> list[str]:
    """Shrink every size key of `config` and its sub-configs in place; returns what changed (for build.json)."""
    changed = []
    nodes = [("", config), *sub_configs(config)]
    mrope_default = _mrope_default(config)
    original = {(name, k): v for name, node in nodes for k, v in vars(node).items() if k == "hidden_size"}
    for name, node in nodes:
        kind = (getattr(node, "model_type", "") or "") + " " + name
        is_vision = bool(re.search(r"vision|visual|vit|image|siglip|clip|vq|encoder", kind)) and "text" not in kind
        is_audio = "audio" in kind
        attrs = vars(node)
        for key, value in list(attrs.items()):
            if key.startswith("_") or isinstance(value, bool) or not isinstance(value, (int, float, list, tuple, str, type(None))):
                continue
            if isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float, str, type(None))) for v in value):
                continue
            new = value
            if isinstance(value, int):
                if LAYER_KEYS.match(key) and value > LAYERS:
                    new = LAYERS
                elif EXPERT_KEYS.match(key) and value > EXPERTS:
                    new = EXPERTS
                elif TOPK_KEYS.match(key) and value > TOPK:
                    new = TOPK
                elif SKIP.search(key) and not WIDTH_KEYS.match(key):
                    pass
                elif HEAD_KEYS.match(key) and value > HEADS:
                    new = HEADS
                elif FFN_KEYS.match(key) and value > FFN:
                    # keep an integer FFN/width ratio (Llama 4's vision adapter reads the FFN width as 4 x hidden)
                    width = attrs.get("hidden_size") if isinstance(attrs.get("hidden_size"), int) else None
                    width = original.get((name, "hidden_size"), width)
                    new = WIDTH * (value // width) if width and value % width == 0 and value // width <= 8 else FFN
                elif WIDTH_KEYS.match(key) and value > WIDTH:
                    new = WIDTH
                elif key == "head_dim" and value:
                    new = WIDTH // HEADS
                elif key in ("kv_lora_rank", "q_lora_rank") and value:
                    new = 32
                elif key in ("qk_rope_head_dim",) and value:
                    new = 16
                elif key in ("qk_nope_head_dim", "v_head_dim") and value:
                    new = 32
                elif key in ("n_shared_experts", "num_shared_experts") and value > 1:
                    new = 1
                elif key in ("n_group", "topk_group", "num_expert_group") and value > 1:
                    new = 1
                elif key in ("first_k_dense_replace",) and value > 1:
                    new = 1
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                if re.match(r"^(depths|\w*num_layers|\w*layers_per_stage)$", key) or LAYER_KEYS.match(key):
                    new = type(value)(min(v, 1) for v in value)
                elif re.match(r"^(\w*num_heads|\w*attention_heads)$", key):
                    new = type(value)(min(v, HEADS) for v in value)
                elif WIDTH_KEYS.match(key) or re.match(r"^(\w*embed_dims?|\w*hidden_sizes|\w*channels)$", key):
                    new = type(value)(min(v, WIDTH) for v in value)
            if key == "vocab_size" and isinstance(value, int) and not is_vision and not is_audio:
                new = vocab
            if key == "image_size" and is_vision and isinstance(value, int):
                new = image_size_for(node)
            if key == "image_size" and is_vision and isinstance(value, (list, tuple)) and len(value) == 2:
                s = image_size_for(node)
                new = type(value)([s, s])
            if key in ("mm_tokens_per_image",) and isinstance(value, int) and value > 4:
                new = 4  # pooled 2 x 2 from the small image's 4 x 4 patches
            if key in ("num_position_embeddings", "num_positions") and is_vision and isinstance(value, int):
                patch = getattr(node, "patch_size", None)
                if isinstance(patch, int):
                    new = (image_size_for(node) // patch) ** 2 + (value - round(value ** 0.5) ** 2)  # keeps a CLS position
            if new != value:
                setattr(node, key, new)
                changed.append(f"{name or 'config'}.{key}: {value} -> {new}")
        # rope sections must add up to head_dim / 2 (a default the modeling code applies when the config has none too)
        for rope_key in ("rope_parameters", "rope_scaling"):
            rope = attrs.get(rope_key)
            if isinstance(rope, dict) and "mrope_section" not in rope and mrope_default and not is_vision:
                rope["mrope_section"] = list(mrope_default)
            if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
                head_dim = attrs.get("head_dim") or (attrs.get("hidden_size", WIDTH) // max(1, attrs.get("num_attention_heads", HEADS)))
                partial = rope.get("partial_rotary_factor") or attrs.get("partial_rotary_factor") or 1.0
                rope["mrope_section"] = _scale_section(rope["mrope_section"], int(head_dim * partial) // 2)
                changed.append(f"{name or 'config'}.{rope_key}.mrope_section -> {rope['mrope_section']}")
    # lists that follow the layer count, and layer indexes
    for name, node in nodes:
        attrs = vars(node)
        layers = next((attrs[k] for k in attrs if LAYER_KEYS.match(k) and isinstance(attrs[k], int)), LAYERS)
        for key, value in list(attrs.items()):
            if isinstance(value, list) and LIST_PER_LAYER.match(key) and len(value) > layers:
                kept = value[:layers]
                if key == "layer_types" and len(set(value)) > 1 and len(set(kept)) == 1:
                    # keep one of each kind (e.g. linear + full attention), the last layer's kind last
                    kinds = list(dict.fromkeys(value))
                    kept = (kinds + [value[-1]] * layers)[:layers] if layers >= len(kinds) else kept
                setattr(node, key, kept)
                changed.append(f"{name or 'config'}.{key}: {len(value)} -> {len(kept)} entries")
            elif INDEX_LISTS.match(key) and value is not None:
                depth = layers
                clamp = lambda i: (max(i, -depth) if i < 0 else min(i, depth - 1)) if isinstance(i, int) else i  # noqa: E731
                new = [clamp(i) for i in value] if isinstance(value, list) else clamp(value)
                if new != value:
                    setattr(node, key, new)
                    changed.append(f"{name or 'config'}.{key}: {value} -> {new}")
            elif key in ("moe_layers", "moe_layer_indices") and isinstance(value, list):
                setattr(node, key, [i for i in value if i < layers] or [0])
    return changed


PATCHES = 4  # patches a side of the small image (OVERRIDES[type]["patches"] changes it)


def small_image_size(node) -> int:
    patch = getattr(node, "patch_size", None) or 14
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return patch * PATCHES


def shrink_image_processor(proc, side: int) -> None:
    """Small sizes everywhere in an image/video processor: `side` px (pixel budgets: side² to (2·side)²)."""
    def fix_size(size):
        if hasattr(size, "__dataclass_fields__") or type(size).__name__ == "SizeDict":
            fields = {k: v for k, v in vars(size).items() if v is not None} if hasattr(size, "__dict__") else dict(size)
            return type(size)(**fix_size(fields))
        if not isinstance(size, dict):
            return size
        out = {}
        for k, v in size.items():
            if not isinstance(v, (int, float)) or v is None:
                out[k] = v
            elif v > 8192:  # a pixel budget (Qwen-style min/max pixels)
                out[k] = (2 * side) ** 2 if "longest" in k or "max" in k else side * side
            else:
                out[k] = side
        return out

    for key, value in list(vars(proc).items()):
        if key in ("size", "crop_size", "max_image_size", "pad_size", "resample_size") and value is not None:
            setattr(proc, key, fix_size(value))
        elif key in ("min_pixels",) and isinstance(value, int):
            setattr(proc, key, side * side)
        elif key in ("max_pixels",) and isinstance(value, int):
            setattr(proc, key, (2 * side) ** 2)
        elif key == "image_size" and isinstance(value, int):
            setattr(proc, key, side)
        elif key == "draw_on_frames" and value:
            setattr(proc, key, False)
        elif key in ("do_image_splitting", "do_tile", "split_image", "do_crop") and value is True:
            setattr(proc, key, False)
        elif key in ("max_image_tiles", "max_num_tiles", "max_patches", "max_num", "max_crops", "max_num_patches") and isinstance(value, int):
            setattr(proc, key, min(value, 2) if key != "max_num_patches" else min(value, 64))
        elif key == "image_grid_pinpoints" and isinstance(value, list):
            setattr(proc, key, [[side, side], [side, 2 * side], [2 * side, side]])


def follow_vision(proc, vision, side: int) -> None:
    """Patch and merge sizes of an image/video processor as the vision config has them; a missing image_seq_length
    set to the image's patch count divided by the merge."""
    if vision is None:
        return
    patch = getattr(vision, "patch_size", None)
    merge = getattr(vision, "spatial_merge_size", None) or getattr(vision, "merge_size", None)
    for key, value in (("patch_size", patch), ("temporal_patch_size", getattr(vision, "temporal_patch_size", None)),
                       ("merge_size", merge), ("spatial_merge_size", merge)):
        if value is not None and hasattr(proc, key) and not isinstance(getattr(proc, key), dict):
            setattr(proc, key, value)
    if getattr(proc, "image_seq_length", None) is None:  # a first guess; calibrate() corrects it from the model's error
        proc.image_seq_length = (side // patch) ** 2 // ((merge or 1) ** 2) if isinstance(patch, int) else 1


def _class(name: str):
    import transformers

    return getattr(transformers, name, None)


def _mapped(mapping, model_type: str, processor_name: str | None):
    """The type's entry in an auto mapping, else the entry of a type that shares its processor class."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    entry = mapping.get(model_type)
    if entry is None and processor_name:
        entry = next((mapping[t] for t, p in PROCESSOR_MAPPING_NAMES.items() if p == processor_name and t in mapping), None)
    if isinstance(entry, dict):
        entry = entry.get("pil") or entry.get("torchvision") or next(iter(v for v in entry.values() if v), None)
    if isinstance(entry, (tuple, list)):
        entry = next((e for e in entry if e), None)
    return entry


def named_tokens(processor_cls) -> tuple[list[str], list[str]]:
    """(special-token literals the processor's module writes, tokenizer.<name>_token attributes it reads)."""
    source = inspect.getsource(sys.modules[processor_cls.__module__])
    literals = set(re.findall(r"[\"'](<\|?[A-Za-z_][A-Za-z0-9_:|/\-\.]{0,40}\|?>|\[[A-Z_]{2,24}\]|\|[A-Z]{3,20}\|)[\"']", source))
    names = set(re.findall(r"tokenizer\.(\w+_token)\b", source))
    return sorted(literals), sorted(names)


def base_tokenizer():
    from transformers import AutoTokenizer

    from curriculum.model.load import resolve_model_path

    path = resolve_model_path("builtin:tiny-llava", os.environ.get("CURRICULUM_CACHE", "/tmp/cc"))
    return AutoTokenizer.from_pretrained(path)


def make_tokenizer(processor_cls):
    from transformers import AutoTokenizer

    tok = base_tokenizer()
    literals, names = named_tokens(processor_cls) if processor_cls else ([], [])
    tok.add_special_tokens({"additional_special_tokens": literals}, replace_extra_special_tokens=False)
    named = {}
    for n in names:
        if n in ("bos_token", "eos_token", "pad_token", "unk_token"):
            continue
        if getattr(tok, n, None) is None:
            named[n] = f"<{n}>"
    if named:
        tok.add_special_tokens({"additional_special_tokens": list(named.values())}, replace_extra_special_tokens=False)
    for n in ("cls_token", "sep_token", "mask_token"):
        if getattr(tok, n, None) is None and n not in named:
            named[n] = f"<{n}>"
            tok.add_special_tokens({n: named[n]})
    if tok.unk_token is None:
        tok.add_special_tokens({"unk_token": "<unk>"})
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        extra = {"image_token": "<image>", **{k: v for k, v in named.items() if k not in ("cls_token", "sep_token", "mask_token")}}
        tok = AutoTokenizer.from_pretrained(tmp, extra_special_tokens=extra)
    return tok, literals


def build_sub_processors(model_type: str, processor_cls, side: int, vision=None) -> dict:
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

    pname = processor_cls.__name__
    parts = {}
    for attr in processor_cls.get_attributes():
        if attr.endswith("tokenizer"):
            continue
        mapping = {"image_processor": IMAGE_PROCESSOR_MAPPING_NAMES, "video_processor": VIDEO_PROCESSOR_MAPPING_NAMES,
                   "feature_extractor": FEATURE_EXTRACTOR_MAPPING_NAMES}.get(attr)
        name = _mapped(mapping, model_type, pname) if mapping is not None else None
        cls = _class(name) if name else None
        if cls is None:
            raise BuilderGap(f"no {attr} class known for {model_type} ({pname} needs one)")
        sub = cls()
        if attr in ("image_processor", "video_processor"):
            shrink_image_processor(sub, side)
            follow_vision(sub, vision, side)
        parts[attr] = sub
    return parts


class BuilderGap(Exception):
    pass


def fill_processor_kwargs(processor_cls, config, side: int) -> dict[str, list]:
    """Candidates for each extra keyword of the processor's __init__ (first = preferred)."""
    params = inspect.signature(processor_cls.__init__).parameters
    vision = getattr(config, "vision_config", None)
    patch = getattr(vision, "patch_size", None) or 14
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    grid = (side // patch) ** 2
    cands: dict[str, list] = {}
    for name, p in params.items():
        if name in ("self", "args", "kwargs", "chat_template") or name in processor_cls.get_attributes():
            continue
        if name == "patch_size":
            cands[name] = [patch]
        elif name in ("vision_feature_select_strategy",):
            cands[name] = [getattr(config, name, None) or p.default]
        elif name == "num_additional_image_tokens":
            cands[name] = [1 if "clip" in (getattr(vision, "model_type", "") or "") else 0, 0, 1]
        elif re.search(r"seq_len|seq_length|num_image_tokens|tokens_per_image|image_seq", name):
            known = getattr(config, "mm_tokens_per_image", None) or getattr(config, "num_image_tokens", None)
            scale = getattr(config, "scale_factor", None) or getattr(config, "downsample_ratio", None)
            vals = [known] if known else []
            if isinstance(scale, (int, float)) and scale:
                vals.append(int(grid * (scale ** 2)) if scale < 1 else int(grid // (scale ** 2)))
            vals += [grid, grid // 4, grid // 16, grid + 1, 1]
            cands[name] = list(dict.fromkeys(v for v in vals if v))
        elif name == "spatial_merge_size":
            cands[name] = [getattr(vision, "spatial_merge_size", None) or p.default]
    return cands


def placeholders_of(processor) -> list[str]:
    """Image placeholders to try in the template: the processor's image token, its other image-ish tokens, `<image>`,
    and nothing (processors that insert the image tokens themselves)."""
    named = [v for k, v in vars(processor).items() if k.endswith("_token") and isinstance(v, str) and v]
    imageish = [v for k, v in vars(processor).items() if k.endswith("_token") and isinstance(v, str) and re.search(r"im(age|g)|vision|visual", k + v, re.I)]
    first = [processor.image_token] if isinstance(getattr(processor, "image_token", None), str) else []
    return list(dict.fromkeys([*first, *imageish, "<image>", ""]))[:6] + [n for n in named if n not in imageish][:0]


def generic_template(placeholder: str) -> str:
    return GENERIC_TEMPLATE.replace("{IMAGE}", placeholder.replace("{", "{{ '{' }}"))


def conversation(with_image: bool):
    user = [{"type": "image"}, {"type": "text", "text": "What shape is this?"}] if with_image else [{"type": "text", "text": "Say hi."}]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]}]


def test_image(side=32):
    from PIL import Image

    img = Image.new("RGB", (side, side), (255, 255, 255))
    for x in range(8, 24):
        for y in range(8, 24):
            img.putpixel((x, y), (200, 30, 30))
    return img


def encode(processor, with_image: bool, generation: bool = False):
    msgs = conversation(with_image)
    if generation:
        msgs = msgs[:1]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)
    if not with_image:
        try:
            return processor(text=[text], return_tensors="pt")
        except Exception:  # noqa: BLE001 - processors that refuse text-only rows: the tokenizer encodes them
            return processor.tokenizer([text], return_tensors="pt")
    last = None
    for images in ([test_image()], [[test_image()]]):
        try:
            return processor(text=[text], images=images, return_tensors="pt")
        except Exception as e:  # noqa: BLE001
            last = e
    raise last


def as_model_dtype(batch: dict, model) -> dict:
    """Floating inputs in the model's dtype (Llama 4's image processor returns bfloat16), as a user's pipeline casts them."""
    return {k: v.to(model.dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def self_check(model, processor) -> str | None:
    """Raises when the image+text forward or generation fails; returns the text-only forward's error (None if fine):
    a model that cannot run without pixels is a finding about the type, not a builder gap."""
    model.eval()
    text_only = None
    for with_image in (True, False):
        try:
            batch = as_model_dtype(dict(encode(processor, with_image)), model)
            batch.pop("labels", None)
            out = model(**batch, labels=batch["input_ids"])
            if out.loss is None or not torch.isfinite(out.loss):
                raise RuntimeError(f"loss is {out.loss} ({'image' if with_image else 'text-only'})")
        except Exception as e:  # noqa: BLE001
            if with_image:
                raise
            text_only = f"{type(e).__name__}: {first_line(e)}"
    batch = as_model_dtype(dict(encode(processor, True, generation=True)), model)
    model.generate(**batch, max_new_tokens=2, do_sample=False)
    return text_only


SEQ_ATTR = re.compile(r"seq_len|seq_length|num_image_tokens|tokens_per_image|image_seq")


def calibrate(processor, message: str) -> bool:
    """After "tokens: X, features: Y" from the model: set the processor's image sequence length to what the model makes."""
    m = re.search(r"tokens:? (\d+),? features:? (\d+)", message)
    if not m:
        return False
    tokens, features = int(m.group(1)), int(m.group(2))
    done = False
    for obj in (processor, getattr(processor, "image_processor", None)):
        for key in dir(obj) if obj is not None else []:
            value = getattr(obj, key, None)
            if SEQ_ATTR.search(key) and isinstance(value, int) and not isinstance(value, bool) and value == tokens and features:
                setattr(obj, key, features)
                done = True
    return done


def repoint_image_token(model, processor, message: str) -> bool:
    """After "tokens: X, features: Y": point the config's image token at the one token of the processed image sample that
    occurs Y times (Llama 4 expands `<|image|>` into `<|patch|>` tokens, which carry the features)."""
    m = re.search(r"tokens:? (\d+),? features:? (\d+)", message)
    if not m:
        return False
    features = int(m.group(2))
    ids = encode(processor, True)["input_ids"][0].tolist()
    special = set(processor.tokenizer.all_special_ids) | set(processor.tokenizer.get_added_vocab().values())
    found = [t for t in set(ids) if ids.count(t) == features and t in special]
    if len(found) != 1:
        return False
    keys = [(node, k) for node in (model.config, *(c for _, c in sub_configs(model.config)))
            for k in ("image_token_id", "image_token_index") if isinstance(getattr(node, k, None), int)]
    for node, key in keys:
        setattr(node, key, found[0])
    return bool(keys)


def norm(name: str) -> str:
    return re.sub(r"image", "im", re.sub(r"[<>|\[\]]", "", name).lower()).removesuffix("_token")


def set_token_ids(config, processor, tokenizer, literals=()) -> None:
    """Point the config's *_token_id / *_token_index keys at the processor's / tokenizer's tokens (or fresh ones)."""
    vocab = len(tokenizer)
    for _, node in [("", config), *sub_configs(config)]:
        for key, value in list(vars(node).items()):
            m = re.match(r"^(\w+?)(?:_token)?_(id|index)$", key)
            if not m or key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "unk_token_id"):
                continue
            stem = m.group(1)
            tid = getattr(processor, f"{stem}_token_id", None)
            if tid is None:
                token = getattr(processor, f"{stem}_token", None) or getattr(tokenizer, f"{stem}_token", None)
                if isinstance(token, str):
                    tid = tokenizer.convert_tokens_to_ids(token)
            if tid is None:  # a literal of the processor's module named like the key (image_patch_id -> <im_patch>)
                tid = next((tokenizer.convert_tokens_to_ids(lit) for lit in literals if norm(lit) == norm(stem)), None)
            if isinstance(tid, int) and 0 <= tid < vocab:
                setattr(node, key, tid)
            elif isinstance(value, int) and value >= vocab:
                setattr(node, key, vocab - 1 - (hash(stem) % 8))  # in range, unused by the chat
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if key in vars(node):
                setattr(node, key, getattr(tokenizer, key))


def build(model_type: str, out: str, info: dict) -> dict:
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    info.update({"model_type": model_type, "model_class": MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type]})
    processor_name = PROCESSOR_MAPPING_NAMES.get(model_type)
    processor_cls = _class(processor_name) if processor_name else None
    info["processor_class"] = processor_name
    config = AutoConfig.for_model(model_type)
    info["is_encoder_decoder"] = bool(getattr(config, "is_encoder_decoder", False) or getattr(getattr(config, "text_config", None), "is_encoder_decoder", False))
    if processor_cls is None:
        raise BuilderGap(f"no processor class for {model_type} in PROCESSOR_MAPPING_NAMES")
    info["processor_attributes"] = processor_cls.get_attributes()
    if "image_processor" not in info["processor_attributes"]:
        info["video_only"] = "video_processor" in info["processor_attributes"]
        raise BuilderGap(f"{processor_name} takes no image processor (attributes: {', '.join(info['processor_attributes'])})")
    tokenizer, literals = make_tokenizer(processor_cls)
    info["added_tokens"] = literals

    global PATCHES
    PATCHES = OVERRIDES.get(model_type, {}).get("patches", PATCHES)
    config = AutoConfig.for_model(model_type, **OVERRIDES.get(model_type, {}).get("config", {}))
    vision = getattr(config, "vision_config", None)
    side = small_image_size(vision) if vision is not None else 32
    info["changed"] = shrink(config, len(tokenizer), small_image_size)
    for dotted, value in OVERRIDES.get(model_type, {}).get("set", {}).items():
        *path, key = dotted.split(".")
        node = config
        for part in path:
            node = getattr(node, part)
        setattr(node, key, value)
        info["changed"].append(f"{dotted} -> {value} (override)")
    if vision is not None and isinstance(getattr(vision, "image_size", None), int):
        side = vision.image_size
    info["image_side"] = side
    parts = build_sub_processors(model_type, processor_cls, side, vision)
    cands = fill_processor_kwargs(processor_cls, config, side)

    # Placeholders to try in the template: the processor's own image-ish token attributes, then "<image>".
    errors = []
    torch.manual_seed(0)
    model = None
    tried = 0
    for combo in itertools.product(*cands.values()) if cands else [()]:
        kwargs = dict(zip(cands.keys(), combo))
        try:
            tokenizers = {a: copy.deepcopy(tokenizer) for a in processor_cls.get_attributes() if a.endswith("tokenizer")}
            if "chat_template" in inspect.signature(processor_cls.__init__).parameters:
                kwargs_all = {**kwargs, "chat_template": generic_template("<image>")}
            else:
                kwargs_all = dict(kwargs)
            processor = processor_cls(**tokenizers, **copy.deepcopy(parts), **kwargs_all)
            processor.chat_template = generic_template("<image>")
        except Exception as e:  # noqa: BLE001
            errors.append(f"processor({kwargs}): {type(e).__name__}: {first_line(e)}")
            continue
        tok = processor.tokenizer
        if model is None:
            # the processor may add tokens (PaliGemma's loc/seg): size the vocabulary after it
            shrink(config, len(tok), small_image_size)
            set_token_ids(config, processor, tok, literals)
            try:
                model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
            except Exception as e:  # noqa: BLE001
                raise BuilderGap(f"model from the shrunk config: {type(e).__name__}: {first_line(e)}") from e
        for placeholder in placeholders_of(processor):
            tried += 1
            processor.chat_template = generic_template(placeholder)
            try:
                try:
                    text_only = self_check(model, processor)
                except Exception as e:  # noqa: BLE001
                    if not (calibrate(processor, str(e)) or repoint_image_token(model, processor, str(e))):
                        raise
                    text_only = self_check(model, processor)
                info["text_only_forward"] = text_only or "ok"
            except Exception as e:  # noqa: BLE001
                errors.append(f"{kwargs} placeholder {placeholder!r}: {type(e).__name__}: {first_line(e)}")
                info["last_traceback"] = traceback.format_exc()[-3000:]
                continue
            info.update(placeholder=placeholder, processor_kwargs={k: v for k, v in kwargs.items()}, tries=tried,
                        chat_template="generic (the type ships none in transformers)",
                        parameters=sum(p.numel() for p in model.parameters()))
            model.save_pretrained(out)
            processor.save_pretrained(out)
            reload_check(out, processor, info)
            info.pop("last_traceback", None)
            return info
        if tried > 24:
            break
    info["errors"] = errors[-8:]
    # the attempt that got furthest: past the processor's own placeholder count check, into the model
    deep = [e for e in errors if "should be the same as the number of images passed" not in e]
    raise BuilderGap((deep or errors or ["no processor could be built"])[0])


def reload_check(out: str, processor, info: dict) -> None:
    """The folder must load back as a hub checkpoint does: the template saved (some processors drop it), the config
    valid when read again (from_pretrained validates what the constructor did not)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if AutoProcessor.from_pretrained(out).chat_template is None:
        with open(os.path.join(out, "chat_template.jinja"), "w") as f:
            f.write(processor.chat_template)
        info["template_file_written"] = True
        if AutoProcessor.from_pretrained(out).chat_template is None:
            # the processor class has no chat-template slot (BLIP, GIT): the tokenizer carries it, as on the hub
            loaded = AutoProcessor.from_pretrained(out)
            if getattr(getattr(loaded, "tokenizer", None), "chat_template", None) is None:
                raise BuilderGap("the saved processor does not load its chat template back, nor its tokenizer")
            info["template_on_tokenizer_only"] = True
    try:
        AutoModelForImageTextToText.from_pretrained(out)
    except Exception as e:  # noqa: BLE001
        raise BuilderGap(f"the saved checkpoint does not load back: {type(e).__name__}: {first_line(e)}") from e


def first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:300]


def main() -> int:
    model_type, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    info = {"model_type": model_type}
    try:
        build(model_type, out, info)
        info["ok"] = True
        code = 0
    except Exception as e:  # noqa: BLE001
        info["ok"] = False
        info["error"] = f"{type(e).__name__}: {first_line(e)}"
        info["traceback"] = traceback.format_exc()[-4000:]
        code = 1
    with open(os.path.join(out, "build.json"), "w") as f:
        json.dump(info, f, indent=1, default=str)
    print(json.dumps({k: info.get(k) for k in ("ok", "error", "placeholder", "processor_kwargs", "parameters", "image_side")}, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
