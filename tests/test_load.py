"""Loading a model folder's processor: a template kept only by the tokenizer is used; an encoder-decoder is refused."""

from __future__ import annotations

import pytest

from curriculum.config import ConfigError
from curriculum.model.load import load_processor


def test_a_processor_that_drops_its_saved_template_gets_the_tokenizers(llava_path, monkeypatch):
    """BLIP, BLIP-2, GIT and IDEFICS processors do not load the template their folder holds; their tokenizers do."""
    import transformers

    real = transformers.AutoProcessor.from_pretrained

    def dropping(*args, **kwargs):
        processor = real(*args, **kwargs)
        processor.tokenizer.chat_template, processor.chat_template = processor.chat_template, None
        return processor

    template = real(llava_path).chat_template
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", dropping)
    assert load_processor(llava_path).chat_template == template

    def none(*args, **kwargs):
        processor = real(*args, **kwargs)
        processor.tokenizer.chat_template = processor.chat_template = None
        return processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", none)
    with pytest.raises(ConfigError, match="has no chat template in its processor or tokenizer"):
        load_processor(llava_path)


def test_an_encoder_decoder_model_is_refused_in_one_sentence_before_anything_loads(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("florence2").save_pretrained(tmp_path)  # a config alone: the refusal comes before any weights
    with pytest.raises(ConfigError, match=r"\(florence2\) is an encoder-decoder model: curriculum trains decoder-only language models"):
        load_processor(str(tmp_path))
