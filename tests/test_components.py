"""Parameters -> vision / projector / language, including names the built-in markers miss."""

from __future__ import annotations

import pytest
import torch

from curriculum.config import ConfigError, ModelConfig
from curriculum.model.components import component_of, component_prefixes, use_component_patterns


@pytest.fixture(autouse=True)
def no_extra_patterns():
    use_component_patterns({})
    yield
    use_component_patterns({})


def _tiny_text() -> dict:
    return dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def _tiny_vision() -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_every_parameter_of_llava_next_and_onevision_has_a_component(family):
    from transformers import AutoConfig, AutoModelForImageTextToText

    vision = {"model_type": "clip_vision_model" if family == "llava_next" else "siglip_vision_model", **_tiny_vision()}
    config = AutoConfig.for_model(family, text_config={"model_type": "llama", **_tiny_text()}, vision_config=vision,
                                  image_grid_pinpoints=[[32, 32]], image_token_index=1)
    model = AutoModelForImageTextToText.from_config(config)
    found = {name: component_of(name) for name, _ in model.named_parameters()}
    assert found["model.image_newline"] == "projector"  # a learned embedding appended to image features
    assert set(found.values()) == {"vision", "projector", "language"}
    assert component_prefixes(model)["projector"] == ["model.image_newline", "model.multi_modal_projector"]


def test_an_unmapped_parameter_says_how_to_map_it_and_model_components_maps_it():
    with pytest.raises(ConfigError, match=r"parameter model\.adapter\.weight belongs to no known component .* model\.components=\{projector: adapter\}"):
        component_of("model.adapter.weight")
    use_component_patterns({"projector": r"(?:^|\.)adapter\.", "vision": r"image_encoder"})
    assert component_of("model.adapter.weight") == "projector"
    assert component_of("model.image_encoder.layers.0.weight") == "vision"
    assert component_of("model.language_model.layers.0.weight") == "language"  # the built-in markers still apply
    module = torch.nn.Module()
    module.adapter = torch.nn.Linear(2, 2)
    assert component_prefixes(module)["projector"] == ["adapter"]


@pytest.mark.parametrize("components_, message", [
    ({"tower": "x"}, "model.components.tower is not allowed: use vision, projector, language."),
    ({"vision": "(unclosed"}, "model.components.vision='(unclosed' is not a valid regex"),
])
def test_model_components_are_checked(components_, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ModelConfig(components=components_).check()


def test_projector_and_tower_names_of_further_families_are_found():
    """DeepSeek-VL/Janus (aligner), ERNIE-4.5-VL (resampler_model), PaddleOCR-VL/VideoLLaMA3/HyperCLOVA X (projector),
    Video-LLaVA (video_tower), BLIP-2 (Q-Former, query tokens), BLIP (text_decoder): the names experiments/coverage met
    in transformers' image-text-to-text models."""
    assert component_of("model.aligner.linear1.weight") == "projector"
    assert component_of("model.resampler_model.spatial_linear.fc1.weight") == "projector"
    assert component_of("model.projector.readout.0.weight") == "projector"
    assert component_of("model.video_tower.embeddings.class_embedding") == component_of("model.image_tower.embeddings.patch_embedding.weight") == "vision"
    assert component_of("query_tokens") == component_of("qformer.encoder.layer.0.attention.attention.query.weight") == "projector"
    assert component_of("language_projection.weight") == "projector"
    assert component_of("text_decoder.bert.embeddings.word_embeddings.weight") == "language"
    assert component_of("model.language_model.layers.0.mlp.down_proj.weight") == "language"


def test_training_a_component_the_model_lacks_is_refused_naming_it():
    from curriculum.config import Mode, TrainableConfig
    from curriculum.model.components import apply_trainability

    model = torch.nn.Module()
    model.vision_model = torch.nn.Linear(2, 2)
    model.text_decoder = torch.nn.Linear(2, 2)  # BLIP: vision features go straight to the language model
    with pytest.raises(ConfigError, match=r"model.trainable.projector=full matched no parameter: this model has no projector parameters"):
        apply_trainability(model, TrainableConfig(vision=Mode.frozen, projector=Mode.full, language=Mode.full))
