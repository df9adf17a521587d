"""Single steps of the coverage sweep, each run in its own subprocess by run.py.

    steps.py load <model folder>        # curriculum's loader: processor (with its checks) + model
    steps.py generate <export folder>   # from_pretrained of an export, then generate on one image + text prompt
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def load(path: str) -> None:
    from curriculum.config.run import ModelConfig
    from curriculum.model.load import load_model, load_processor

    processor = load_processor(path)
    model = load_model(ModelConfig(name_or_path=path), path)
    print(f"loaded {type(model).__name__} and {type(processor).__name__}")


def generate(path: str) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from build import as_model_dtype, encode  # the same image + text prompt as the build's self-check

    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    if processor.chat_template is None:  # BLIP-2's processor drops the template its tokenizer keeps (as curriculum's loader reads it)
        processor.chat_template = processor.tokenizer.chat_template
    print("EXPORT_LOADED", flush=True)
    batch = as_model_dtype(dict(encode(processor, True, generation=True)), model)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:]
    print(f"generated {len(new)} tokens: {processor.tokenizer.decode(new)!r}")


if __name__ == "__main__":
    if sys.argv[1] == "load":
        from curriculum.cli.common import USER_ERRORS, user_message

        try:
            load(sys.argv[2])
        except USER_ERRORS as e:  # a refusal: one line, as curriculum-train prints it
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(1)
    else:
        generate(sys.argv[2])
