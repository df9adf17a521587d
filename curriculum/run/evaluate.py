"""Generation-based evaluation: greedy answers to validation samples, scored per group.

Each record's last assistant turn is the reference; everything before it is the prompt, rendered
by the model's own chat template with `add_generation_prompt`. Answers are scored by exact match
and token F1 after the usual normalisation (case, punctuation, articles, spaces), and each group
also gets its per-token loss on the reference, as validation computes it.
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from curriculum.atomic import write_json
from curriculum.data.collate import Collator, padded_copy
from curriculum.data.images import ImageError, load_image
from curriculum.data.template import IGNORE_INDEX, adds_special_tokens, render_chat, to_hf_messages
from curriculum.model.loss import NOT_MODEL_INPUTS, supervised_token_losses, unsupervised_batch
from curriculum.model.vision_dummy import one_image_sample
from curriculum.progress_lines import CountedLines

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# Thinking models (Qwen3/3.5, MiniCPM-V 4.6, GLM-4.1V-Thinking) close their reasoning with this tag before answering.
THINK_END = "</think>"


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are equal, else 0.0."""
    return float(normalise_answer(prediction) == normalise_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised answers' word multisets (1.0 when both are empty)."""
    pred, ref = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_of(generated: str) -> str:
    """The answer in generated text: what follows a thinking block (`...</think>`) where the model wrote one."""
    return generated.rsplit(THINK_END, 1)[-1].strip()


def split_reference(record: dict) -> tuple[list[dict], str]:
    """(prompt messages, reference answer): the conversation up to its last assistant turn, and that turn."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@dataclass
class EvalSettings:
    """How answers are generated: new tokens per answer and samples per generate call."""

    max_new_tokens: int = 32
    batch_size: int = 16


class Evaluator:
    """Generates answers with a model and its processor, and scores them per group."""

    def __init__(self, model, processor, group_names: list[str], max_length: int, settings: EvalSettings | None = None, truncate: bool = False):
        self.model = model
        # Under DDP / FSDP every rank evaluates its share of the batches and all ranks get the whole result.
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        self.settings = settings or EvalSettings()
        # A private copy: generation pads on the left, training batches on the right.
        self.processor = padded_copy(processor, "left")
        self.tokenizer = self.processor.tokenizer
        self.group_names = group_names
        self.collator = Collator(processor, group_names, max_length, on_invalid="skip", truncate=truncate)

    def _my_chunks(self, records: list[dict], kind_of) -> list[tuple[list[int], bool]]:
        """This rank's (record indices, padding?) batches: batches of one kind each, dealt over ranks kind by kind.

        Every rank runs the same number of batches of each kind in the same order (a rank short of
        batches repeats one and discards it), so under FSDP the same units gather in every call.
        """
        kinds = [kind_of(r) for r in records]
        mine = []
        for kind in dict.fromkeys(kinds):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            chunks = [idx[s : s + self.settings.batch_size] for s in range(0, len(idx), self.settings.batch_size)]
            share = [(c, False) for c in chunks[self.rank :: self.world]]
            mine += share + [(chunks[0], True)] * (-(-len(chunks) // self.world) - len(share))
        return mine

    def _gather(self, local: list) -> list:
        """Every rank's list, concatenated (this rank's alone on one process)."""
        if self.world == 1:
            return local
        every: list = [None] * self.world
        dist.all_gather_object(every, local)
        return [x for part in every for x in part]

    @torch.no_grad()
    def answers(self, records: list[dict]) -> list[str | None]:
        """The greedy answer to each record's prompt (None when its images cannot be read)."""
        out: list[str | None] = [None] * len(records)
        # One group per generate call, and image and text-only prompts never share a padded batch.
        local = []
        chunks = self._my_chunks(records, lambda r: (r["group"], bool(r["images"])))
        progress = CountedLines("generation", "samples answered" + (f" on rank {self.rank}" if self.world > 1 else ""),
                                total=sum(len(c) for c, padding in chunks if not padding))
        for chunk, padding in chunks:
            texts = self._generate([records[i] for i in chunk])
            if not padding:
                local += list(zip(chunk, texts))
            progress.update(len(local))
        progress.finish()
        for i, text in self._gather(local):
            out[i] = text
        return out

    def _generate(self, records: list[dict]) -> list[str | None]:
        prompts, images, usable = [], [], []
        for r in records:
            try:
                images.append([load_image(ref) for ref in r["images"]])
            except ImageError:
                usable.append(False)
                continue
            usable.append(True)
            prompt, _ = split_reference(r)
            prompts.append(render_chat(self.processor, to_hf_messages(prompt), add_generation_prompt=True))
        if not prompts and self.world == 1:
            return [None] * len(records)
        if not prompts:
            # Every image unreadable: generate on a stand-in all the same, since the other ranks' sharded units gather in it.
            inputs = self._on_model(self._stand_in(any(r["images"] for r in records)))
        elif not any(images) and self.collator.text_rows_by_tokenizer:  # a processor that refuses text-only prompts
            special = adds_special_tokens(self.tokenizer, prompts[0])
            inputs = self._on_model(self.tokenizer(prompts, padding=True, add_special_tokens=special, return_tensors="pt"))
        else:
            special = adds_special_tokens(self.tokenizer, prompts[0])
            inputs = self._on_model(self.processor(
                text=prompts, images=images if any(images) else None, padding=True, padding_side=self.tokenizer.padding_side,
                add_special_tokens=special, return_tensors="pt",
            ))
        was_training = self.model.training
        self.model.eval()
        try:
            with _root_gathered(self.model):
                ids = self.model.generate(
                    **inputs, max_new_tokens=self.settings.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                    # Ranks finish at different lengths: each keeps running forwards until all are done (sharded weights).
                    synced_gpus=self.world > 1,
                )
        finally:
            self.model.train(was_training)
        texts = iter(self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        return [answer_of(next(texts)) if ok else None for ok in usable]

    def _stand_in(self, images: bool) -> dict:
        """Inputs of the same kind as a batch the other ranks run (one image, or one text token) that no result comes from.

        Under FSDP a forward gathers the units it reaches on every rank together: a rank whose
        batch was entirely skipped must still run one, through the same modules.
        """
        if images:
            return one_image_sample(self.processor, self.model)
        batch = unsupervised_batch(self.model, torch.device("cpu"))
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _on_model(self, inputs: dict) -> dict:
        """Tensors moved to the model's device, floating ones in its dtype."""
        device = next(self.model.parameters()).device
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        return {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in inputs.items()}

    @torch.no_grad()
    def losses(self, records: list[dict]) -> dict[str, tuple[float, int]]:
        """Per group: (summed token loss, supervised tokens) on the references, as validation computes them."""
        sums = {g: [0.0, 0] for g in self.group_names}
        local = []
        was_training = self.model.training
        self.model.eval()
        try:
            # Image and text-only records in separate batches, so every rank runs the same modules in each forward.
            for chunk, padding in self._my_chunks(records, lambda r: bool(r["images"])):
                batch = self.collator([records[i] for i in chunk])
                if batch["input_ids"].numel() == 0 and self.world == 1:
                    continue
                if batch["input_ids"].numel() == 0:  # every sample skipped: a stand-in forward, as in _generate
                    batch = self._stand_in(bool(records[chunk[0]]["images"]))
                    batch["labels"] = torch.full_like(batch["input_ids"], IGNORE_INDEX)
                    batch["group_ids"] = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long)
                    padding = True
                inputs = self._on_model({k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS})
                labels = batch["labels"].to(inputs["input_ids"].device)
                token_loss, rows = supervised_token_losses(self.model, inputs, labels)
                group_of_row = batch["group_ids"].to(labels.device)[rows]
                if not padding:
                    local += [(name, float(token_loss[group_of_row == g].double().sum()), int((group_of_row == g).sum()))
                              for g, name in enumerate(self.group_names)]
        finally:
            self.model.train(was_training)
        for name, loss, tokens in self._gather(local):
            sums[name][0] += loss
            sums[name][1] += tokens
        return {g: (s, n) for g, (s, n) in sums.items()}

    def evaluate(self, records: list[dict]) -> dict:
        """Per-group exact match, token F1 and loss, plus every sample's answer: the eval.json contract."""
        answers = self.answers(records)
        losses = self.losses(records)
        samples, groups = [], {}
        for r, answer in zip(records, answers):
            _, reference = split_reference(r)
            entry = {"id": r["id"], "group": r["group"], "reference": reference, "prediction": answer}
            if answer is not None:
                entry["exact_match"], entry["token_f1"] = exact_match(answer, reference), token_f1(answer, reference)
            samples.append(entry)
        for g in self.group_names:
            scored = [s for s in samples if s["group"] == g and s["prediction"] is not None]
            if not scored and not losses[g][1]:
                continue
            loss_sum, tokens = losses[g]
            groups[g] = {
                "samples": len(scored),
                "unreadable": sum(1 for s in samples if s["group"] == g and s["prediction"] is None),
                "exact_match": sum(s["exact_match"] for s in scored) / len(scored) if scored else None,
                "token_f1": sum(s["token_f1"] for s in scored) / len(scored) if scored else None,
                "loss": loss_sum / tokens if tokens else None,
            }
        return {"groups": groups, "samples": samples}


@contextmanager
def _root_gathered(model):
    """Under FSDP2, the root unit's weights gathered for a whole `generate`.

    generate encodes images (get_image_features) before its first forward, outside the hooks
    that gather the root unit; the blocks still gather in their own forwards.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def eval_metrics(result: dict) -> dict[str, float]:
    """metrics.csv columns of an evaluation: eval/<metric>_<group>."""
    out = {}
    for g, scores in result["groups"].items():
        for metric in ("exact_match", "token_f1", "loss"):
            if scores[metric] is not None:
                out[f"eval/{metric}_{g}"] = float(scores[metric])
    return out


def eval_records(table, per_group: int | None = None) -> list[dict]:
    """Records of a table in order; with `per_group`, the first that many of each group."""
    if per_group is None:
        return [table[i] for i in range(len(table))]
    rows = sorted(int(i) for rows in table.group_indices().values() for i in rows[:per_group])
    return [table[i] for i in rows]


def write_eval(folder: str, result: dict) -> str:
    """eval.json in `folder` (written atomically); returns its path."""
    return write_json(os.path.join(folder, "eval.json"), result)
