"""Processor-driven batches: chat template -> input_ids, assistant-only labels, pixel inputs, group ids.

Labels come from the processor's own chat template: the characters of each assistant turn are
found by rendering the conversation prefixes, mapped to tokens of the unexpanded text through
offsets, and carried onto the processor's expanded ids (image placeholders become many image
tokens) by subsequence alignment. Where expanding images changes how the text around them
tokenises (templates that wrap images in markers or newlines), the alignment fails and the turn
boundaries are found by running the processor itself on the conversation prefixes, with their
images. No token ids or templates are written per model.

The assistant spans themselves come from template.py. May import data's other modules.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from jinja2 import TemplateError

from curriculum.data.errors import SampleError
from curriculum.data.images import ImageError, load_image
from curriculum.data.packing import pack
from curriculum.data.records import IMAGE_TOKEN
from curriculum.data.template import IGNORE_INDEX, adds_special_tokens, align, assistant_spans, common_prefix, to_hf_messages


@dataclass
class _Prepared:
    record: dict
    images: list
    text: str
    ids: list[int]
    supervised: list[bool]
    # Whether the tokenizer adds its special tokens (BOS), as the processor's own chat path decides.
    add_special_tokens: bool
    # Per assistant turn: (text before its content, text up to its end marker, images in each prefix).
    turns: list[tuple[str, str, int, int]]


def takes_text_only(processor) -> bool:
    """Whether the processor encodes a row without images."""
    try:
        processor(text=["a"], return_tensors="pt")
    except Exception:  # noqa: BLE001 - PaliGemma's raises ValueError; another may raise its own type
        return False
    return True


def _stacked(images: dict | None, texts: dict | None, pad_id: int) -> dict:
    """The processor's rows with images, then the tokenizer's text-only rows, padded to one width.

    Per-token tensors (ids, masks, token types) are padded and stacked; text rows have no image
    tokens (token types 0); the rest (pixel values) belong to the image rows alone.
    """
    if images is None or texts is None:
        return dict(images if texts is None else texts)
    n_rows, width = images["input_ids"].shape
    width = max(width, texts["input_ids"].shape[1])
    out = {}
    for k, v in images.items():
        if not (isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == n_rows and k != "labels"):
            out[k] = v
            continue
        fill = pad_id if k == "input_ids" else 0
        other = texts.get(k, torch.zeros_like(texts["input_ids"]))
        out[k] = torch.cat([F.pad(v, (0, width - v.shape[1]), value=fill), F.pad(other, (0, width - other.shape[1]), value=fill)])
    return out


def _answer_types(labels: torch.Tensor) -> torch.Tensor:
    """Prefix-LM token types: 0 on the prompt, 1 from each row's first supervised token on (later turns included, so
    no answer is visible to the tokens before it)."""
    supervised = (labels != IGNORE_INDEX).long()
    return (supervised.cumsum(dim=1) > 0).long()


def padded_copy(processor, side: str):
    """A private copy of the processor whose tokenizer pads on `side` (with EOS when it has no pad token).

    Processors with a padding side of their own (MiniCPM-V pads left) are given the tokenizer's at each call.
    """
    processor = copy.deepcopy(processor)
    processor.tokenizer.padding_side = side
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


Replacements = Callable[[dict], Iterator[dict]]


class Collator:
    """Turns a list of canonical records into one model batch; invalid samples follow `on_invalid`.

    With `replacements` (training), a sample that cannot be used is replaced by the first usable
    record that `replacements(record)` yields (the next ones of its group), so every step trains
    its planned per-group counts; without (validation), it is skipped and counted.
    """

    def __init__(
        self,
        processor,
        group_names: list[str],
        max_length: int,
        on_invalid: str,
        replacements: Replacements | None = None,
        truncate: bool = False,
        packing: bool = False,
    ):
        # A private copy: padding settings made for training must not reach the exported processor.
        self.processor = padded_copy(processor, "right")
        self.tokenizer = self.processor.tokenizer
        self.replacements = replacements
        self.group_index = {g: i for i, g in enumerate(group_names)}
        self.max_length = max_length
        # Without truncation a sample longer than max_length is invalid; with it, the text is cut (never image tokens).
        self.truncate = truncate
        # Padding-free rows (packing.py): the samples end to end, positions restarting per sample.
        self.packing = packing
        self.on_invalid = on_invalid
        self.image_token_ids = {
            i for i in (getattr(processor, "image_token_id", None), self.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", IMAGE_TOKEN))) if isinstance(i, int)
        }
        # A processor that takes the answer as a `suffix` (PaliGemma's) makes prefix-LM inputs: the prompt is attended both
        # ways (token_type_ids 0), the answer causally (1). The collator marks them from its labels.
        self.prefix_lm = "suffix" in inspect.signature(type(self.processor).__call__).parameters
        # Such processors refuse text-only rows (and mangle them in a mixed batch): the tokenizer encodes those rows.
        self.text_rows_by_tokenizer = not takes_text_only(self.processor)
        # Whether the processor takes a batch's images as one flat list (None: not known before the first images).
        self.flat_images: bool | None = None

    def with_replacements(self, replacements: Replacements) -> Collator:
        """This collator replacing unusable samples from `replacements` (shares the processor)."""
        out = copy.copy(self)
        out.replacements = replacements
        return out

    def __call__(self, records: list[dict]) -> dict:
        skipped: list[dict] = []
        prepared = []
        for r in records:
            try:
                prepared.append(self._prepare(r))
            except (ImageError, SampleError) as e:
                self._reject(r, str(e), skipped)
                prepared.append(self._replacement(r, skipped))
        batch = self._encode([p for p in prepared if p is not None], skipped)
        # Floating inputs as float32 whatever the processor returns (Llama 4's gives bfloat16 pixels): the module,
        # evaluation and Lightning's precision cast them to the model's dtype from there.
        batch = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}
        batch["skipped"] = skipped
        # Every drawn record, skipped or not, so the realised mix can be checked against the plan.
        batch["drawn_group_ids"] = torch.tensor([self.group_index[r["group"]] for r in records], dtype=torch.long)
        return batch

    def _reject(self, record: dict, reason: str, skipped: list[dict]) -> None:
        if self.on_invalid == "error":
            raise SampleError(f"record {record['id']} ({record['source']}): {reason} (set data.on_invalid=skip to count and skip such records)")
        skipped.append({"id": record["id"], "source": record["source"], "reason": reason})

    def _replacement(self, record: dict, skipped: list[dict]) -> _Prepared | None:
        """The first usable record after `record` in its group (deterministic), noted on its skip entry."""
        if self.replacements is None:
            return None
        for candidate in self.replacements(record):
            try:
                p = self._prepare(candidate)
                self._check_alone(p)
            except Exception:  # noqa: BLE001 - unusable too, for whatever reason; it is counted when it is drawn itself
                continue
            skipped[-1]["replaced_by"] = candidate["id"]
            return p
        skipped[-1]["exhausted"] = record["group"]
        return None

    def _check_alone(self, p: _Prepared) -> None:
        """Raise SampleError unless `p` processes and keeps supervised tokens on its own."""
        _, keep, reasons = self._labels(self._process([p]), [p])
        if not keep[0]:
            raise SampleError(reasons[0])

    def inspect(self, record: dict) -> dict:
        """What training sees of one record: the rendered text, its expanded ids and labels, and why it would be skipped (or None)."""
        try:
            p = self._prepare(record)
            out = self._process([p])
        except (ImageError, SampleError, ValueError) as e:
            return {"text": None, "input_ids": [], "labels": [], "reason": str(e).splitlines()[0]}
        labels, _, reasons = self._labels(out, [p])
        n = int(out["attention_mask"][0].sum())
        return {"text": p.text, "input_ids": out["input_ids"][0, :n].tolist(), "labels": labels[0, :n].tolist(), "reason": reasons[0] or None}

    def _prepare(self, record: dict) -> _Prepared:
        images = [load_image(p) for p in record["images"]]
        messages = to_hf_messages(record["messages"])
        try:
            text, spans = assistant_spans(self.processor, messages)
        except (TemplateError, ValueError) as e:  # e.g. a template that requires alternating roles or a system turn
            raise SampleError(f"the chat template cannot render it: {str(e).splitlines()[0]}") from None
        special = adds_special_tokens(self.tokenizer, text)
        enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        # Special tokens the tokenizer adds have empty offsets and are never supervised.
        supervised = [b > a and any(lo <= a < hi for lo, hi in spans) for a, b in enc["offset_mapping"]]
        # Images come in message order, so a prefix that ends in message i holds the images of messages before it.
        seen = [sum(part["type"] == "image" for m in messages[:i] for part in m["content"]) for i in range(len(messages) + 1)]
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        turns = [(text[:lo], text[:hi], seen[i], seen[i + 1]) for i, (lo, hi) in zip(assistant, spans)]
        return _Prepared(record, images, text, list(enc["input_ids"]), supervised, special, turns)

    def _encode(self, prepared: list[_Prepared], skipped: list[dict]) -> dict:
        while prepared:
            if self.text_rows_by_tokenizer:
                prepared = sorted(prepared, key=lambda p: not p.images)  # stable: rows with images first
            try:
                out = self._process(prepared)
            except Exception:  # noqa: BLE001 - processors raise ValueError, TypeError, IndexError... for one odd sample
                # Find the samples the processor refuses on their own, count them, process the rest.
                errors = [self._process_error(p) for p in prepared]
                if not any(errors):
                    raise
                kept = []
                for p, err in zip(prepared, errors):
                    if err:
                        self._reject(p.record, f"the processor refused it: {err}", skipped)
                        p = self._replacement(p.record, skipped)
                    if p is not None:
                        kept.append(p)
                prepared = kept
                continue
            labels, keep, reasons = self._labels(out, prepared)
            if all(keep):
                break
            kept = []
            for p, ok, why in zip(prepared, keep, reasons):
                if not ok:
                    self._reject(p.record, why, skipped)
                    p = self._replacement(p.record, skipped)
                if p is not None:
                    kept.append(p)
            prepared = kept
        else:  # nothing drawn (a rank's padding batch) or nothing usable left
            return {"input_ids": torch.zeros(0, 0, dtype=torch.long), "group_ids": torch.zeros(0, dtype=torch.long), "sample_ids": []}
        width = min(out["input_ids"].shape[1], self.max_length)
        batch = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        batch["input_ids"] = batch["input_ids"][:, :width]
        batch["attention_mask"] = batch["attention_mask"][:, :width]
        batch["labels"] = labels[:, :width]
        if self.prefix_lm:
            batch["token_type_ids"] = _answer_types(batch["labels"])
        # Per-token inputs beside the ids (Mllama's cross_attention_mask is [rows, tokens, images, tiles]).
        for k in ("token_type_ids", "mm_token_type_ids", "cross_attention_mask"):
            if k in batch and batch[k].dim() >= 2:
                batch[k] = batch[k][:, :width]
        batch["group_ids"] = torch.tensor([self.group_index[p.record["group"]] for p in prepared], dtype=torch.long)
        batch["sample_ids"] = [p.record["id"] for p in prepared]
        return pack(batch, self.max_length, self.tokenizer.pad_token_id) if self.packing else batch

    def _process(self, prepared: list[_Prepared]):
        """The processor's batch for `prepared` in order (with text_rows_by_tokenizer, rows with images come first)."""
        if not prepared:
            return {"input_ids": torch.zeros(0, 0, dtype=torch.long), "attention_mask": torch.zeros(0, 0, dtype=torch.long)}
        special = prepared[0].add_special_tokens
        if any(p.add_special_tokens != special for p in prepared):
            raise SampleError("the chat template starts some conversations with BOS and others without")
        texts = [p.text for p in prepared]
        if self.text_rows_by_tokenizer:
            n = sum(1 for p in prepared if p.images)
            if any(p.images for p in prepared[n:]):
                raise ValueError("rows with images must come before text-only rows for this processor")
            rows = self.tokenizer(texts[n:], padding=True, add_special_tokens=special, return_tensors="pt") if n < len(texts) else None
            out = self._call(texts[:n], [p.images for p in prepared[:n]], special) if n else None
            return _stacked(out, rows, self.tokenizer.pad_token_id)
        images = [p.images for p in prepared] if any(p.images for p in prepared) else None
        return self._call(texts, images, special)

    def _call(self, texts: list[str], images, special: bool):
        return self._processed(
            texts, images, padding=True, padding_side=self.tokenizer.padding_side, add_special_tokens=special, return_tensors="pt",
        )

    def _processed(self, texts: list[str], images: list[list] | None, **kwargs):
        """The processor on rows and their images: nested per row, or flat in row order for a processor that refuses
        nested images (GOT-OCR2 without multi_page), found on the first call that has images."""
        if images is not None and self.flat_images:
            images = [im for row in images for im in row]
        try:
            out = self.processor(text=texts, images=images, **kwargs)
        except Exception as nested_error:  # noqa: BLE001 - whatever the processor raises; re-raised unless flat images pass
            if images is None or self.flat_images is not None:
                raise
            try:
                out = self.processor(text=texts, images=[im for row in images for im in row], **kwargs)
            except Exception:  # noqa: BLE001 - the nested call's error is the one to report
                raise nested_error from None
            self.flat_images = True
            return out
        if images is not None and self.flat_images is None:
            self.flat_images = False
        return out

    def _process_error(self, p: _Prepared) -> str:
        try:
            self._process([p])
        except Exception as e:  # noqa: BLE001 - whatever the processor raises for this sample alone
            return (str(e).splitlines() or [""])[0] or type(e).__name__
        return ""

    def _supervised_by_prefixes(self, p: _Prepared, expanded: list[int]) -> list[bool]:
        """Supervised flags of the expanded ids, each assistant turn located by processing the prefixes around it.

        A turn starts where the processed prefix before its content stops matching the whole
        sample's ids (a token merging prompt and answer counts as answer) and ends with the
        processed prefix that closes it.
        """
        flags = [False] * len(expanded)
        for before, upto, n_before, n_upto in p.turns:
            start = common_prefix(self._prefix_ids(p, before, n_before), expanded)
            end = common_prefix(self._prefix_ids(p, upto, n_upto), expanded)
            if end <= start:
                raise ValueError("an assistant turn has no tokens of its own when the conversation's prefixes are processed")
            flags[start:end] = [True] * (end - start)
        return flags

    def _prefix_ids(self, p: _Prepared, text: str, n_images: int) -> list[int]:
        if not n_images and self.text_rows_by_tokenizer:
            return self.tokenizer(text, add_special_tokens=p.add_special_tokens)["input_ids"]
        images = [p.images[:n_images]] if n_images else None
        out = self._processed([text], images, add_special_tokens=p.add_special_tokens, return_tensors="pt")
        return out["input_ids"][0].tolist()

    def _labels(self, out, prepared: list[_Prepared]):
        ids = out["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        keep, reasons = [], []
        for row, p in enumerate(prepared):
            n = int(out["attention_mask"][row].sum())
            expanded = ids[row, :n].tolist()
            try:
                mapping = align(expanded, p.ids)
                flags = [j >= 0 and p.supervised[j] for j in mapping]
                image_pos = [k for k, j in enumerate(mapping) if j < 0 or p.ids[j] in self.image_token_ids]
            except ValueError:
                try:
                    flags = self._supervised_by_prefixes(p, expanded)
                except Exception as e:  # noqa: BLE001 - the processor may refuse a prefix in its own way
                    keep.append(False)
                    reasons.append(f"labels cannot be placed on the processor's tokens: {e}")
                    continue
                image_pos = [k for k, t in enumerate(expanded) if t in self.image_token_ids]
            if n > self.max_length and not self.truncate:
                keep.append(False)
                reasons.append(f"{n} tokens (images expanded), over data.max_length={self.max_length} (or set data.truncate=true)")
                continue
            if n > self.max_length and image_pos and image_pos[-1] >= self.max_length:
                keep.append(False)
                reasons.append(f"truncation to data.max_length={self.max_length} would cut image tokens (sample has {n} tokens)")
                continue
            for k, flag in enumerate(flags[: self.max_length]):
                if flag and expanded[k] not in self.image_token_ids:
                    labels[row, k] = expanded[k]
            # Position 0 is never predicted, so it does not count as a supervised token.
            if not bool((labels[row, 1 : self.max_length] != IGNORE_INDEX).any()):
                keep.append(False)
                reasons.append(f"no supervised (assistant) token within data.max_length={self.max_length}")
                continue
            keep.append(True)
            reasons.append("")
        return labels, keep, reasons
