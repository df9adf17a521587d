"""Load any transformers image-text-to-text model + processor, and wire PEFT and trainability."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch

from curriculum.config import ConfigError, ModelConfig, TrainableConfig
from curriculum.model.builtin import BUILTIN_PREFIX, PRETRAIN_RECORDS, ensure_builtin
from curriculum.model.components import apply_trainability, component_prefixes, lora_target_regex, use_component_patterns

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str, cache_dir: str) -> str:
    """A local folder or hub id as given, or the folder of a built-in model (built on first use)."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
        if local and not os.path.isdir(os.path.expanduser(name_or_path)):
            raise ConfigError(
                f"model.name_or_path={name_or_path}: no such folder (give an existing model folder, a hub id such as "
                "llava-hf/llava-1.5-7b-hf, or builtin:tiny-llava / builtin:tiny-idefics3, -pretrained for a text-trained language model)."
            )
        if local or os.path.isdir(name_or_path):
            return os.path.expanduser(name_or_path)
        check_hub_model(name_or_path)
        return name_or_path
    from curriculum.data.builtin import ensure_shapes, iter_texts, text_pretraining_records

    # The built-in tokenizer is trained on the default built-in data, whatever the run trains on.
    shapes = ensure_shapes(cache_dir)
    return ensure_builtin(
        name_or_path[len(BUILTIN_PREFIX):], cache_dir, lambda: iter_texts(shapes), lambda: text_pretraining_records(PRETRAIN_RECORDS)
    )


def check_hub_model(repo_id: str, timeout: float = 10.0) -> None:
    """Refuse in seconds a model id that is not a folder, not in the Hub cache and not on a Hub reachable now.

    Otherwise from_pretrained retries the network for minutes before it fails (offline clusters).
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    where = f"model.name_or_path={repo_id}: no such folder, and not in the Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"{where} (HF_HUB_OFFLINE is set): give an existing model folder.")
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except RepositoryNotFoundError:
        raise ConfigError(f"{where} or on the Hub: give an existing model folder or a Hub id.") from None
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a timeout: the Hub cannot tell us now
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"{where}, and the Hub cannot be reached now ({reason}): give an existing model folder.") from None


def load_processor(path: str, kwargs: dict | None = None):
    """The model's processor (tokenizer, image processor, chat template), with `kwargs` (model.processor_kwargs) for from_pretrained."""
    from transformers import AutoProcessor

    kwargs = kwargs or {}
    refuse_encoder_decoder(path)
    with _one_line(path):
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        if "backend" not in kwargs and getattr(processor, "image_processor", None) is not None:
            processor.image_processor = _pil_image_processor(path, kwargs)
    if getattr(processor, "chat_template", None) is None and getattr(getattr(processor, "tokenizer", None), "chat_template", None):
        # Some processor classes (BLIP, BLIP-2, GIT, IDEFICS) do not load a saved template that their tokenizer does.
        processor.chat_template = processor.tokenizer.chat_template
    if getattr(processor, "chat_template", None) is None:
        raise ConfigError(f"model {path} has no chat template in its processor or tokenizer: labels need one to find assistant turns.")
    return processor


def refuse_encoder_decoder(path: str) -> None:
    """Refuse, in one sentence, a model whose language model is an encoder-decoder (Florence-2, UDOP, Pix2Struct...)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):  # no model config here (a LoRA adapter's folder): the processor or model load says what is wrong
        return
    parts = [config, *(getattr(config, k, None) for k in ("text_config", "decoder"))]
    if any(getattr(c, "is_encoder_decoder", False) for c in parts if c is not None):
        raise ConfigError(
            f"model {path} ({config.model_type}) is an encoder-decoder model: curriculum trains decoder-only language models "
            "(labels are positions of one causal sequence), so it cannot train this one."
        )


def _pil_image_processor(path: str, kwargs: dict):
    """The model's image processor on the PIL backend (the reference implementation), torchvision's where it has no other.

    transformers 5.24's torchvision backends mis-shape some batches that mix image and text-only
    rows (Mllama's aspect_ratio_ids lose the text-only row); video processors keep their backend.
    `model.processor_kwargs={backend: torchvision}` chooses the other one.
    """
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its "falling back to torchvision" warning is expected, not news
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def load_model(cfg: ModelConfig, path: str, trainable: TrainableConfig | None = None) -> torch.nn.Module:
    """The model from `path` with PEFT adapters and requires_grad per component.

    `trainable` is the mode each component has whenever it trains (over all stages); default model.trainable.
    """
    trainable = trainable or cfg.trainable
    from transformers import AutoModelForImageTextToText

    use_component_patterns(cfg.components or {})

    kwargs = {"dtype": DTYPES[cfg.dtype]}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if not os.path.isdir(path):
        log.info("loading %s from the hub cache or the network", path)
    with _one_line(path):
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    model.train()  # from_pretrained returns eval mode; dropout must be on while training
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings are fine.
        if hasattr(model, "activation_checkpointing_enable"):  # the name newer transformers use
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.peft is not None:
        model = _with_lora(model, cfg, trainable)
    counts = apply_trainability(model, trainable)
    log.info("trainable parameters per component: %s", counts)
    if cfg.frozen_dtype not in (None, cfg.dtype):
        cast_frozen(model, DTYPES[cfg.frozen_dtype])
    return model


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the weights no stage trains (requires_grad off) in `dtype`; trained ones keep theirs."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for p in frozen:
        p.data = p.data.to(dtype)
    log.info("%d frozen parameter tensors stored in %s", len(frozen), str(dtype).removeprefix("torch."))


@contextmanager
def _one_line(path: str) -> Iterator[None]:
    """A model or processor that cannot be loaded (not found, no network, wrong files) is one ConfigError line."""
    try:
        yield
    except (OSError, ValueError) as e:
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"model.name_or_path={path}: cannot be loaded: {reason}") from None


def _with_lora(model, cfg: ModelConfig, trainable: TrainableConfig):
    from peft import LoraConfig, get_peft_model

    prefixes = component_prefixes(model)
    # Fully trained components must be saved with the adapter, so PEFT keeps them as modules_to_save.
    full = [p.rsplit(".", 1)[-1] for c in ("vision", "projector", "language") if getattr(trainable, c).value == "full" for p in prefixes[c]]
    lora = LoraConfig(
        r=cfg.peft.r,
        lora_alpha=cfg.peft.alpha,
        lora_dropout=cfg.peft.dropout,
        target_modules=lora_target_regex(model, trainable, cfg.peft),
        modules_to_save=full or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
