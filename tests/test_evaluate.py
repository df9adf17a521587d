"""Generation-based evaluation: answer scoring, and greedy answers that reproduce what a model learnt."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from conftest import record
from curriculum.data.collate import Collator
from curriculum.data.records import load_or_build
from curriculum.run.evaluate import EvalSettings, Evaluator, answer_of, eval_metrics, eval_records, exact_match, normalise_answer, split_reference, token_f1
from curriculum.model.load import load_processor
from curriculum.model.loss import NOT_MODEL_INPUTS


def test_answers_are_normalised_then_scored():
    assert normalise_answer("  The Circle,  is RED! ") == "circle is red"
    assert exact_match("the circle is red.", "Circle is red") == 1.0 and exact_match("red", "blue") == 0.0
    assert token_f1("circle is red", "the circle is blue") == pytest.approx(2 / 3)  # 2 of 3 words both ways
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("green", "red") == 0.0


def test_the_answer_is_what_follows_a_thinking_block():
    assert answer_of("\n</think>\n\n Red. ") == "Red." and answer_of("<think>\nhm\n</think>\n\nBlue") == "Blue"
    assert answer_of(" Green ") == "Green"


def test_the_last_assistant_turn_is_the_reference():
    r = record("m", "Q1?", "A1.")
    r["messages"] += [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2."}]
    prompt, reference = split_reference(r)
    assert reference == "A2." and [m["content"] for m in prompt] == ["Q1?", "A1.", "Q2?"]


def test_eval_records_takes_the_first_of_each_group(cache_dir, shapes):
    table, _ = load_or_build([shapes.val_file], cache_dir=cache_dir)
    picked = eval_records(table, per_group=2)
    assert [r["group"] for r in picked] == ["image_text", "image_text", "text_only", "text_only"]
    assert len(eval_records(table)) == len(table)


# Overfitting takes seconds per family: the built-ins and Mistral 3, whose answers follow the prompt with no
# generation prompt. Every family generates in test_recipe; thinking blocks: test_the_answer_is_what_follows_a_thinking_block.
OVERFIT = ["tiny-llava", "tiny-idefics3", "tiny-mistral3"]


@pytest.mark.parametrize("arch", OVERFIT, indirect=True)
def test_a_model_that_learnt_two_answers_reproduces_them_exactly(arch, cache_dir, shapes):
    """Overfit one image-text and one text-only record; greedy answers through the chat template's
    generation prompt must then equal the references, so exact match is 1 in both groups."""
    table, _ = load_or_build([shapes.val_file], cache_dir=cache_dir)
    records = [table[0], table[len(table) - 1]]
    assert [r["group"] for r in records] == ["image_text", "text_only"]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(arch)
    processor = load_processor(arch)
    groups = ["image_text", "text_only"]
    batch = Collator(processor, groups, 512, "error")(records)
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(**inputs, labels=batch["labels"]).loss
        if loss.item() < 0.02:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02
    result = Evaluator(model, processor, groups, 512, EvalSettings(max_new_tokens=12)).evaluate(records)
    assert [(s["prediction"], s["reference"]) for s in result["samples"]] == [(s["reference"], s["reference"]) for s in result["samples"]]
    assert {g: (s["samples"], s["exact_match"], s["token_f1"]) for g, s in result["groups"].items()} == {
        "image_text": (1, 1.0, 1.0), "text_only": (1, 1.0, 1.0)}
    assert all(s["loss"] < 0.05 for s in result["groups"].values())
    assert eval_metrics(result)["eval/exact_match_text_only"] == 1.0
    assert model.training  # evaluation leaves the model's mode as it found it


def test_curriculum_eval_says_in_one_line_what_a_folder_lacks(tmp_path, capsys):
    from curriculum.cli.evaluate import main

    def error(folder) -> str:
        with pytest.raises(SystemExit) as stop:
            main([str(folder)])
        assert stop.value.code == 1
        return capsys.readouterr().err.strip()

    assert error(tmp_path) == (f"error: {tmp_path} is neither a run folder (with run_config.yaml) nor a model folder "
                               "(with config.json or adapter_config.json).")
    (tmp_path / "run_config.yaml").write_text("seed: 0\n")
    assert error(tmp_path).startswith(f"error: {tmp_path} has no export/ folder (the run did not finish, or export.enabled was false)")


def test_generation_scores_every_n_validation_rounds_by_step():
    from types import SimpleNamespace

    from curriculum.run.callbacks import GenerationEval

    written = []
    module = SimpleNamespace(write_metrics=lambda metrics, step: written.append(step))
    callback = GenerationEval(lambda: {"eval/exact_match_x": 1.0}, val_every_n_steps=10, every_n=2, run_steps=60)
    for step in (10, 20, 30, 40, 50, 60):  # validation rounds 1-6; the end is scored by the recipe
        callback.on_validation_end(SimpleNamespace(global_step=step, sanity_checking=False, is_global_zero=True), module)
    assert written == [19, 39]  # rounds 2 and 4, logged at the step whose training preceded them
    # Every rank answers its share of the samples (under FSDP each forward gathers weights from all ranks).
    callback.on_validation_end(SimpleNamespace(global_step=20, sanity_checking=False, is_global_zero=False), module)
    assert written == [19, 39, 19]


def test_curriculum_eval_on_a_model_folder_needs_only_validation_files_and_writes_outside_it(llava_path, tmp_path):
    import json
    import os

    from conftest import png, write_jsonl
    from curriculum.cli.evaluate import run

    img = png(tmp_path / "a.png")
    val = write_jsonl(tmp_path / "v.jsonl", [
        {"id": "i", "image": img, "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "t", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ])
    before = sorted(os.listdir(llava_path))
    path = run(llava_path, [f"data.val_files=[{val}]", f"paths.output_root={tmp_path / 'out'}", "eval.max_new_tokens=2"])
    assert path.startswith(str(tmp_path / "out" / "evals")) and sorted(os.listdir(llava_path)) == before
    assert {s["id"] for s in json.load(open(path))["samples"]} == {"i", "t"}
    there = run(llava_path, [f"data.val_files=[{val}]", f"eval.output_dir={tmp_path / 'here'}", "eval.max_new_tokens=2"])
    assert there == str(tmp_path / "here" / "eval.json")


def test_a_rank_whose_images_are_all_unreadable_still_runs_every_forward(llava_path, tmp_path, monkeypatch):
    """Under FSDP every forward gathers on all ranks: a rank with nothing usable in a batch runs a stand-in of its kind."""
    from conftest import png

    model = AutoModelForImageTextToText.from_pretrained(llava_path)
    evaluator = Evaluator(model, load_processor(llava_path), ["image_text", "text_only"], 512, EvalSettings(max_new_tokens=2, batch_size=2))
    monkeypatch.setattr(evaluator, "world", 2)  # rank 0 of 2; gathering is the identity here
    monkeypatch.setattr(evaluator, "_gather", lambda local: local)
    gone = str(tmp_path / "gone.png")
    records = [record("a", "<image>\nColour?", "Red.", [gone]), record("b", "<image>\nShape?", "Round.", [gone]),
               record("c", "<image>\nColour?", "Red.", [png(tmp_path / "c.png")]), record("d", "<image>\nSize?", "Big.", [gone]),
               record("t", "2+2?", "4")]
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert evaluator.losses(records)["image_text"][1] == 0  # rank 0's image batch ([a, b]) was all skipped
    # Rank 0 of 2 gets image batch [a, b] (all skipped: a stand-in forward) and the text batch [t]: two forwards.
    assert len(calls) == 2
    generated = []

    def generate(input_ids, **kwargs):  # the real one syncs ranks through torch.distributed
        generated.append("pixel_values" in kwargs)
        return input_ids

    monkeypatch.setattr(model, "generate", generate)
    answers = evaluator.answers(records)
    # Rank 0's chunks: images [a, b] (all unreadable: generate on a stand-in image prompt), then the text chunk [t].
    assert generated == [True, False] and answers[0] is None and answers[1] is None
