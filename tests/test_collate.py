"""Batches built by the processor: assistant-only labels, no zero images, invalid-sample policy."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import png, record
from families import generation_suffix, image_token_id, supervised
from curriculum.data.collate import Collator, SampleError, takes_text_only
from curriculum.data.template import IGNORE_INDEX, adds_special_tokens, for_template, to_hf_messages
from curriculum.model.load import load_processor

GROUPS = ["image_text", "text_only"]


def supervised_text(processor, batch, row) -> str:
    labels = batch["labels"][row]
    return processor.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())


def test_labels_cover_exactly_the_assistant_turns(arch, tmp_path):
    processor = load_processor(arch)
    img = png(tmp_path / "a.png")
    multi = record("m", "How many sides has a square?", "Four.", source="x")
    multi["messages"] += [{"role": "user", "content": "And a triangle?"}, {"role": "assistant", "content": "Three."}]
    batch = Collator(processor, GROUPS, 512, "error")([record("i", "<image>\nWhat colour?", "Red.", [img]), multi])
    # The answer and the end-of-turn token; not the template's newline after it.
    assert supervised_text(processor, batch, 0) == "".join(supervised(arch, "Red."))
    assert supervised_text(processor, batch, 1) == "".join(supervised(arch, "Four.", "Three."))
    assert batch["group_ids"].tolist() == [0, 1]
    assert batch["sample_ids"] == ["i", "m"]
    # The training ids start as the processor's own generation prompt for the last answer: BOS exactly as there, never doubled.
    ids = batch["input_ids"][1].tolist()
    history = for_template(processor, to_hf_messages(multi["messages"][:-1]))
    if takes_text_only(processor):
        prompt = processor.apply_chat_template(history, add_generation_prompt=True, tokenize=True, return_dict=True)
    else:  # PaliGemma's processor refuses text-only prompts: its tokenizer encodes them, as for training
        text = processor.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        prompt = processor.tokenizer(text, add_special_tokens=adds_special_tokens(processor.tokenizer, text))
    generation_ids = torch.as_tensor(prompt["input_ids"]).flatten().tolist()  # a list, a list of lists or a tensor, by processor
    if generation_suffix(arch):
        generation_ids = generation_ids[: -len(processor.tokenizer(generation_suffix(arch), add_special_tokens=False)["input_ids"])]
    assert ids[: len(generation_ids)] == generation_ids
    assert ids.count(processor.tokenizer.bos_token_id) <= 1
    # The image-text row carries the model's image tokens (one per image where cross-attention reads it); none is supervised.
    image_id = image_token_id(arch)
    assert (batch["input_ids"][0] == image_id).sum() >= 1
    assert (batch["labels"][0][batch["input_ids"][0] == image_id] == IGNORE_INDEX).all()


def test_text_only_batch_carries_no_pixels(processor):
    batch = Collator(processor, GROUPS, 512, "error")([record("t1", "2+2?", "4."), record("t2", "Hi", "Hello.")])
    assert "pixel_values" not in batch
    assert batch["input_ids"].shape[0] == 2 and batch["skipped"] == []


def test_mixed_batch_has_one_image_per_image_record(processor, tmp_path):
    img = png(tmp_path / "a.png")
    batch = Collator(processor, GROUPS, 512, "error")([record("i", "<image>\nQ?", "A.", [img]), record("t", "Q?", "A.")])
    assert batch["pixel_values"].shape[0] == 1


def test_a_sample_over_max_length_follows_the_policy_with_its_length(processor, tmp_path):
    img = png(tmp_path / "a.png")
    long = record("long", "word " * 40 + "<image>\nWhat colour?", "Red.", [img])
    n = len(Collator(processor, GROUPS, 10_000, "error").inspect(long)["input_ids"])
    batch = Collator(processor, GROUPS, 24, "skip")([long, record("ok", "Q?", "A.")])
    assert batch["sample_ids"] == ["ok"]
    assert batch["skipped"][0]["reason"] == f"{n} tokens (images expanded), over data.max_length=24 (or set data.truncate=true)"
    with pytest.raises(SampleError, match=rf"record long \(test.jsonl\): {n} tokens \(images expanded\), over data.max_length=24"):
        Collator(processor, GROUPS, 24, "error")([long])


def test_truncation_that_cuts_image_tokens_is_invalid(processor, tmp_path):
    img = png(tmp_path / "a.png")
    long_prompt = "word " * 40 + "<image>\nWhat colour?"
    rec = record("late-image", long_prompt, "Red.", [img])
    ok = record("ok", "Q?", "A.")
    batch = Collator(processor, GROUPS, 24, "skip", truncate=True)([rec, ok])
    assert batch["sample_ids"] == ["ok"]
    assert batch["skipped"][0]["id"] == "late-image"
    assert "would cut image tokens" in batch["skipped"][0]["reason"]
    with pytest.raises(SampleError, match=r"record late-image \(test.jsonl\): truncation to data.max_length=24"):
        Collator(processor, GROUPS, 24, "error", truncate=True)([rec])


def test_truncation_keeps_short_answers_and_rejects_lost_ones(processor):
    kept = Collator(processor, GROUPS, 24, "skip", truncate=True)([record("short", "Q?", "A long answer " * 10)])
    assert kept["input_ids"].shape[1] == 24 and kept["sample_ids"] == ["short"]
    lost = Collator(processor, GROUPS, 12, "skip", truncate=True)([record("lost", "A long question " * 10, "A.")])
    assert lost["sample_ids"] == [] and "no supervised (assistant) token" in lost["skipped"][0]["reason"]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"not a png at all"), "not a readable image file"),
        (lambda p: p.write_bytes(open(png(p), "rb").read()[:60]), "corrupt or unreadable"),
    ],
)
def test_unreadable_images_follow_the_policy(processor, tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    rec = record("bad", "<image>\nQ?", "A.", [str(path)])
    batch = Collator(processor, GROUPS, 512, "skip")([rec, record("t", "Q?", "A.")])
    assert batch["sample_ids"] == ["t"]
    assert batch["skipped"] == [{"id": "bad", "source": "test.jsonl", "reason": batch["skipped"][0]["reason"]}]
    assert reason in batch["skipped"][0]["reason"] and str(path) in batch["skipped"][0]["reason"]
    with pytest.raises(SampleError, match=rf"record bad \(test.jsonl\): image {path}"):
        Collator(processor, GROUPS, 512, "error")([rec])


def test_decompression_bomb_respects_pillows_limit(processor, tmp_path, monkeypatch):
    img = png(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    batch = Collator(processor, GROUPS, 512, "skip")([record("bomb", "<image>\nQ?", "A.", [img])])
    assert batch["sample_ids"] == [] and "decompression bomb" in batch["skipped"][0]["reason"]


def test_all_skipped_batch_is_empty_not_an_error(processor, tmp_path):
    batch = Collator(processor, GROUPS, 512, "skip")([record("x", "<image>\nQ?", "A.", [str(tmp_path / "missing.png")])])
    assert batch["input_ids"].numel() == 0 and len(batch["skipped"]) == 1


def test_collator_leaves_the_processor_settings_alone(processor):
    processor.tokenizer.padding_side = "left"
    pad = processor.tokenizer.pad_token
    batch = Collator(processor, GROUPS, 512, "error")([record("t1", "2+2?", "4."), record("t2", "Hi", "Hello there.")])
    assert batch["attention_mask"][0, -1] == 0  # training pads on the right
    # The processor that gets exported keeps the base model's padding side and pad token.
    assert processor.tokenizer.padding_side == "left" and processor.tokenizer.pad_token == pad


def test_bos_is_handled_as_the_generation_path_does(processor):
    from tokenizers.processors import TemplateProcessing

    tok = processor.tokenizer
    bos = tok.bos_token
    # A tokenizer that adds BOS itself, with a template that does not write it (as Llama-style families).
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
    rec = record("t", "2+2?", "4.")
    batch = Collator(processor, GROUPS, 512, "error")([rec])
    ids = batch["input_ids"][0].tolist()
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    prompt = processor.apply_chat_template(to_hf_messages(rec["messages"][:1]), add_generation_prompt=True, tokenize=True, return_dict=True)
    generation_ids = torch.as_tensor(prompt["input_ids"]).flatten().tolist()  # a list, a list of lists or a tensor, by processor
    assert ids[: len(generation_ids)] == generation_ids
    assert supervised_text(processor, batch, 0) == "4.<|im_end|>"
    # A template that writes BOS itself gets none added.
    processor.chat_template = bos + processor.chat_template
    ids = Collator(processor, GROUPS, 512, "error")([rec])["input_ids"][0].tolist()
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def refuse_alignment(monkeypatch):
    """Make the token alignment fail, as when image expansion changes how neighbouring text tokenises."""
    import curriculum.data.collate as collate

    def refuse(expanded, unexpanded):
        raise ValueError("the processor's token ids do not contain the chat text's tokens in order")

    monkeypatch.setattr(collate, "align", refuse)


def test_where_alignment_fails_processed_prefixes_give_the_same_labels(processor, monkeypatch, tmp_path):
    img = png(tmp_path / "a.png")
    two_turns = {**record("t", "<image>\nColour?", "Red.", [img]), "messages": [
        {"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Shape?"}, {"role": "assistant", "content": "A square, I think."}]}
    records = [two_turns, record("x", "2+2?", "Four.")]
    aligned = Collator(processor, GROUPS, 512, "error")(records)
    refuse_alignment(monkeypatch)
    by_prefixes = Collator(processor, GROUPS, 512, "error")(records)
    assert torch.equal(aligned["labels"], by_prefixes["labels"])
    assert processor.tokenizer.decode(by_prefixes["labels"][0][by_prefixes["labels"][0] >= 0]).count("<|im_end|>") == 2


def test_a_sample_whose_labels_cannot_be_placed_follows_the_policy(processor, monkeypatch):
    refuse_alignment(monkeypatch)
    real = Collator._prefix_ids

    def inconsistent(self, p, text, n_images):  # a processor that tokenises the long record's prefixes differently
        ids = real(self, p, text, n_images)
        return [t + 1 for t in ids] if p.record["id"] == "odd" else ids

    monkeypatch.setattr(Collator, "_prefix_ids", inconsistent)
    odd, ok = record("odd", "A much longer question " * 20, "A."), record("ok", "Q?", "A.")
    batch = Collator(processor, GROUPS, 512, "skip")([odd, ok])
    assert batch["sample_ids"] == ["ok"]
    assert [s["id"] for s in batch["skipped"]] == ["odd"] and "labels cannot be placed" in batch["skipped"][0]["reason"]
    with pytest.raises(SampleError, match=r"record odd \(test.jsonl\): labels cannot be placed"):
        Collator(processor, GROUPS, 512, "error")([odd])


def test_processor_kwargs_reach_the_processor_and_its_export(llava_path, tmp_path):
    from transformers import AutoProcessor

    processor = load_processor(llava_path, {"do_resize": False})
    assert processor.image_processor.do_resize is False
    processor.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).image_processor.do_resize is False


def test_qwen_pixel_bounds_set_in_processor_kwargs_set_its_image_tokens(cache_dir, llava_path, tmp_path):
    """Dynamic resolution: `model.processor_kwargs={size: {longest_edge: ...}}` (pixels) bounds the tokens per image."""
    from families import ensure_family

    path = ensure_family("tiny-qwen2-vl", cache_dir, llava_path)
    sample = [record("i", "<image>\nWhat colour?", "Red.", [png(tmp_path / "a.png", size=(64, 64))])]
    counts = []
    for longest in (32 * 32, 64 * 64):
        processor = load_processor(path, {"size": {"shortest_edge": 256, "longest_edge": longest}})
        batch = Collator(processor, GROUPS, 512, "error")(sample)
        counts.append(int((batch["input_ids"] == image_token_id(path)).sum()))
    assert counts == [4, 16]  # (32/8)^2 / 2^2 patches merged, then (64/8)^2 / 2^2


def test_idefics3_image_splitting_gives_tiles_markers_and_padded_tiles_for_text_rows(cache_dir, llava_path, tmp_path):
    from families import ensure_family

    processor = load_processor(ensure_family("tiny-idefics3-split", cache_dir, llava_path))
    batch = Collator(processor, GROUPS, 512, "error")([record("i", "<image>\nWhat colour?", "Red.", [png(tmp_path / "a.png")]), record("t", "Q?", "A.")])
    # 2x2 tiles and the whole image; the text-only row gets empty tiles that pixel_attention_mask switches off.
    assert tuple(batch["pixel_values"].shape[:2]) == (2, 5)
    assert batch["pixel_attention_mask"][0].any() and not batch["pixel_attention_mask"][1].any()
    assert "<row_2_col_2>" in processor.tokenizer.decode(batch["input_ids"][0])
    assert supervised_text(processor, batch, 0) == "Red.<|im_end|>"


def test_a_conversation_the_chat_template_refuses_follows_the_policy(processor):
    processor.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    twice = record("twice", "Q?", "A.")
    twice["messages"].insert(0, {"role": "user", "content": "Hello."})
    batch = Collator(processor, GROUPS, 512, "skip")([twice, record("ok", "Q?", "A.")])
    assert batch["sample_ids"] == ["ok"]
    assert batch["skipped"][0]["reason"] == "the chat template cannot render it: Conversation roles must alternate user/assistant/user/assistant/..."
    with pytest.raises(SampleError, match=r"record twice \(test.jsonl\): the chat template cannot render it"):
        Collator(processor, GROUPS, 512, "error")([twice])


def test_a_prefix_lm_sees_its_prompt_both_ways_and_its_answers_causally(cache_dir, llava_path, tmp_path):
    """PaliGemma: token_type_ids 0 on the prompt, 1 from the first answer token on (a later turn's prompt too, so no
    answer is visible before it is written); its processor refuses text-only rows, which the tokenizer encodes."""
    from families import ensure_family

    processor = load_processor(ensure_family("tiny-paligemma", cache_dir, llava_path))
    multi = record("m", "How many sides has a square?", "Four.")
    multi["messages"] += [{"role": "user", "content": "And a triangle?"}, {"role": "assistant", "content": "Three."}]
    batch = Collator(processor, GROUPS, 512, "error")([multi, record("i", "<image>\nWhat colour?", "Red.", [png(tmp_path / "a.png")])])
    assert batch["sample_ids"] == ["i", "m"] and batch["pixel_values"].shape[0] == 1  # rows with images first
    for row in range(2):
        supervised = (batch["labels"][row] != IGNORE_INDEX).nonzero()[:, 0]
        first, n = int(supervised[0]), int(batch["attention_mask"][row].sum())
        assert batch["token_type_ids"][row, :first].eq(0).all() and batch["token_type_ids"][row, first:n].eq(1).all()
    assert supervised_text(processor, batch, 1) == "\nFour.<eos>\nThree.<eos>"


def test_a_record_with_two_images_collates_and_trains_on_every_family(arch, tmp_path):
    from transformers import AutoModelForImageTextToText

    from curriculum.model.loss import NOT_MODEL_INPUTS, supervised_token_losses

    processor = load_processor(arch)
    images = [png(tmp_path / "a.png"), png(tmp_path / "b.png", color=(0, 0, 255), size=(48, 32))]
    two = record("two", "<image>\n<image>\nWhich is red?", "The first.", images)
    batch = Collator(processor, GROUPS, 1024, "error")([two, record("t", "Q?", "A.")])
    assert supervised_text(processor, batch, 0) == "".join(supervised(arch, "The first."))
    assert (batch["labels"][0][batch["input_ids"][0] == image_token_id(arch)] == IGNORE_INDEX).all()
    model = AutoModelForImageTextToText.from_pretrained(arch)
    token_loss, rows = supervised_token_losses(model, {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}, batch["labels"])
    token_loss.sum().backward()
    assert torch.isfinite(token_loss).all() and set(rows.tolist()) == {0, 1}


def test_a_sample_the_processor_refuses_with_any_error_follows_the_policy(processor, monkeypatch):
    collator = Collator(processor, GROUPS, 512, "skip")
    real = type(collator.processor).__call__

    def picky(self, text=None, **kwargs):  # as a processor that fails on one odd sample with its own exception type
        if any("odd" in t for t in text):
            raise IndexError("list index out of range")
        return real(self, text=text, **kwargs)

    monkeypatch.setattr(type(collator.processor), "__call__", picky)
    batch = collator([record("o", "An odd question?", "A."), record("ok", "Q?", "A.")])
    assert batch["sample_ids"] == ["ok"]
    assert batch["skipped"][0]["reason"] == "the processor refused it: list index out of range"
    with pytest.raises(SampleError, match=r"record o \(test.jsonl\): the processor refused it: list index out of range"):
        Collator(processor, GROUPS, 512, "error")([record("o", "An odd question?", "A.")])


class FlatImagesOnly:
    """A processor that refuses images nested per row, as GOT-OCR2's does without multi_page."""

    def __init__(self, processor):
        self.inner = processor

    def __getattr__(self, name):
        if "inner" not in self.__dict__:  # a copy being built
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, text=None, images=None, **kwargs):
        if images is not None and isinstance(images[0], list):
            raise ValueError("Nested images are only supported with `multi_page` set to `True`.")
        return self.inner(text=text, images=images, **kwargs)


def test_a_processor_that_takes_only_a_flat_image_list_gets_one_in_row_order(processor, tmp_path):
    records = [record("a", "<image>\nShape?", "A square.", [png(tmp_path / "a.png", (255, 0, 0))]), record("t", "Q?", "Four."),
               record("b", "<image>\nShape?", "A circle.", [png(tmp_path / "b.png", (0, 0, 255))])]
    want = Collator(processor, GROUPS, 512, "error")(records)
    flat = Collator(FlatImagesOnly(processor), GROUPS, 512, "error")
    got = flat(records)
    assert flat.flat_images is True and not got["skipped"]
    for key in ("input_ids", "labels", "pixel_values", "attention_mask"):
        assert torch.equal(got[key], want[key]), key
