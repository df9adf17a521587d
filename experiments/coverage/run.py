"""Coverage of curriculum over every model type transformers maps to AutoModelForImageTextToText.

    .venv/bin/python experiments/coverage/run.py [--types llava,qwen2_vl] [--out experiments/coverage] [--jobs 1]

For each type: build a tiny random checkpoint (build.py), load it with curriculum's loader, `curriculum-plan inspect=2`
(the supervised text must be exactly the answers), a two-stage `curriculum-train experiment=quick` run (2 + 2 steps)
that exports, `from_pretrained` of the export and `generate`. Every step is a subprocess with a timeout. Results go
to <out>/results.json (merged with earlier runs, so --types re-runs a subset), <out>/coverage.csv and coverage.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = sys.executable
BIN = os.path.dirname(PY)
TIMEOUTS = {"build": 300, "load": 180, "plan": 300, "train": 600, "generate": 180}
TRAIN_OVERRIDES = ["experiment=quick", "schedule.stages.align.steps=2", "schedule.stages.blend.steps=2",
                   "trainer.val_every_n_steps=0", "trainer.limit_val_batches=1", "data.val_micro_batch_size=4", "checkpoint.every_n_steps=100"]
STEPS = ["builds", "labels", "trains", "exports", "generates"]
CATEGORIES = [
    "needs remote code", "no processor", "no chat template (generic used)", "encoder-decoder", "video-only", "audio",
    "config not shrinkable / builder gap", "refused by curriculum", "unsupported by our collator or module", "other",
]


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
             TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", CURRICULUM_CACHE=os.environ.get("CURRICULUM_CACHE", "/tmp/cc"))
    return e


def call(cmd: list[str], timeout: int, log: str) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, stdout+stderr, seconds); the output is also written to `log`."""
    start = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        code, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        code, out = None, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\nTIMEOUT after {timeout} s"
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n\n" + out)
    return code, out, time.time() - start


def traceback_facts(out: str) -> dict:
    """The error's first line, the innermost curriculum frame and the innermost frame of the last traceback in `out`."""
    last_tb = out.rfind("Traceback (most recent call last)")
    tb = out[last_tb:] if last_tb >= 0 else ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    ours = [f for f in frames if f"{os.sep}curriculum{os.sep}" in f[0] and "site-packages" not in f[0] and "experiments" not in f[0]]
    facts = {}
    if ours:
        path, line, fn = ours[-1]
        facts["where"] = f"{os.path.relpath(path, ROOT)}:{fn} (line {line})"
    if frames:
        path, line, fn = frames[-1]
        short = path.split("site-packages" + os.sep)[-1] if "site-packages" in path else os.path.relpath(path, ROOT)
        facts["innermost"] = f"{short}:{fn} (line {line})"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    err = next((ln for ln in reversed(lines) if ln.startswith("error: ")), None)
    if tb:
        tail = [ln for ln in tb.splitlines() if ln.strip() and not ln.startswith((" ", "\t", "Traceback"))]
        # the exception line: the last unindented line that looks like `Name: message` or a bare exception name
        exc = next((ln for ln in reversed(tail) if re.match(r"^[\w\.]+(Error|Exception|Exit|Interrupt|Gap)?(:|$)", ln)), tail[-1] if tail else "")
        facts["error"] = exc.strip()[:300]
    elif err:
        facts["error"] = err[:300]
        facts["one_line"] = True
    elif lines:
        facts["error"] = lines[-1][:300]
    return facts


def classify(step: str, facts: dict, info: dict, out: str) -> str:
    text = out + json.dumps(info.get("errors", ""))
    if "trust_remote_code" in text:
        return "needs remote code"
    if step == "builds":
        err = info.get("error", "")
        if "no processor class" in err:
            return "no processor"
        if info.get("video_only"):
            return "video-only"
        if "feature_extractor" in err or "audio" in err.lower():
            return "audio"
        if info.get("is_encoder_decoder"):
            return "encoder-decoder"
        return "config not shrinkable / builder gap"
    if info.get("is_encoder_decoder"):
        return "encoder-decoder"
    if "Image features and image tokens do not match" in text:
        # transformers' own check that the processor's image tokens and the tower's features agree: a published
        # checkpoint's do by construction; the shrunk tower and the processor's fixed sequence length here do not.
        return "config not shrinkable / builder gap"
    if "the processor refused it" in text or "skipped: " in text:
        # the collator's call of the processor failed on every sample: how curriculum calls it, not a refusal by design
        return "unsupported by our collator or module"
    if facts.get("one_line"):
        return "refused by curriculum"
    if facts.get("where") or step == "labels":
        return "unsupported by our collator or module"
    return "other"


def check_labels(plan_dir: str) -> tuple[bool, str]:
    """Whether every inspected sample's supervised text is exactly its answer (plus the end-of-turn token)."""
    files = glob.glob(os.path.join(plan_dir, "**", "inspect.jsonl"), recursive=True)
    if not files:
        return False, "no inspect.jsonl written"
    answers: dict[str, str] = {}
    rows = [json.loads(line) for line in open(files[0])]
    for source in {r["source"] for r in rows}:
        for rec in json.load(open(source)):
            turns = [t["value"] for t in rec.get("conversations", []) if t["from"] == "gpt"]
            answers[rec["id"]] = "".join(turns)
    for r in rows:
        got = r.get("supervised_text") or ""
        bare = re.sub(r"(\s*<[^<>\s]+>)+\s*$", "", got).strip()
        if r.get("skip_reason"):
            return False, f"{r['id']} skipped: {r['skip_reason']}"
        if bare != answers.get(r["id"], "").strip():
            return False, f"supervised text of {r['id']} is {got!r}, the answer is {answers.get(r['id'])!r}"
    return True, f"{len(rows)} samples: supervised text = answer + end of turn"


def run_type(model_type: str, work: str) -> dict:
    folder = os.path.join(work, model_type)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    model_dir, logs = os.path.join(folder, "model"), os.path.join(folder, "logs")
    os.makedirs(logs)
    row: dict = {"model_type": model_type, **{s: "" for s in STEPS}, "category": "", "reason": "", "where": "", "innermost": "", "seconds": {}}
    info: dict = {}

    def fail(step: str, out: str) -> dict:
        facts = traceback_facts(out)
        row[step] = "no"
        row["failed_step"] = step
        row["category"] = classify(step, facts, info, out)
        row["reason"] = facts.get("error", "") if step != "builds" else info.get("error", facts.get("error", ""))
        row["where"], row["innermost"] = facts.get("where", ""), facts.get("innermost", "")
        if step == "builds":
            tb = info.get("last_traceback") or info.get("traceback") or ""
            f2 = traceback_facts(tb)
            row["innermost"] = f2.get("innermost", "")
        for later in STEPS[STEPS.index(step) + 1:]:
            row[later] = "-"
        return row

    # 1. build
    code, out, secs = call([PY, os.path.join(HERE, "build.py"), model_type, model_dir], TIMEOUTS["build"], os.path.join(logs, "build.log"))
    row["seconds"]["build"] = round(secs, 1)
    try:
        info = json.load(open(os.path.join(model_dir, "build.json")))
    except (OSError, ValueError):
        info = {"error": traceback_facts(out).get("error", "build crashed")}
    row["model_class"] = info.get("model_class", "")
    row["template"] = "generic" if info.get("ok") else ""
    row["parameters"] = info.get("parameters", "")
    if code != 0 or not info.get("ok"):
        if code is None:
            info["error"] = f"timeout after {TIMEOUTS['build']} s"
        return fail("builds", out)
    # 1b. curriculum's loader
    code, out, secs = call([PY, os.path.join(HERE, "steps.py"), "load", model_dir], TIMEOUTS["load"], os.path.join(logs, "load.log"))
    row["seconds"]["load"] = round(secs, 1)
    if code != 0:
        row["builds"] = "yes"
        return fail("labels", out)
    row["builds"] = "yes"
    # 2. plan + inspect
    plan_dir = os.path.join(folder, "plan")
    code, out, secs = call([os.path.join(BIN, "curriculum-plan"), f"model.name_or_path={model_dir}", "inspect=2", f"paths.output_root={plan_dir}"],
                           TIMEOUTS["plan"], os.path.join(logs, "plan.log"))
    row["seconds"]["plan"] = round(secs, 1)
    if code != 0:
        return fail("labels", out)
    ok, why = check_labels(plan_dir)
    row["labels"] = "yes" if ok else "no"
    row["labels_detail"] = why
    # 3. train two stages + export (continue even when labels are wrong: training may still work)
    runs = os.path.join(folder, "runs")
    code, out, secs = call([os.path.join(BIN, "curriculum-train"), f"model.name_or_path={model_dir}", f"paths.output_root={runs}", *TRAIN_OVERRIDES],
                           TIMEOUTS["train"], os.path.join(logs, "train.log"))
    row["seconds"]["train"] = round(secs, 1)
    run_dirs = [os.path.dirname(p) for p in glob.glob(os.path.join(runs, "*", "*", "status.json"))]
    trained = bool(run_dirs) and os.path.isfile(os.path.join(run_dirs[0], "checkpoints", "stage-blend.ckpt"))
    export = os.path.join(run_dirs[0], "export") if run_dirs else ""
    if not trained:
        if not ok:
            row["failed_step"] = "labels"
        r = fail("trains", out)
        if not ok:  # report the label problem first
            r["labels"] = "no"
            r["reason"] = f"labels: {why}; train: {r['reason']}"
        return r
    row["trains"] = "yes"
    if code != 0 or not os.path.isfile(os.path.join(export, "config.json")):
        return fail("exports", out)
    # 4. export loads with from_pretrained, then generates
    code, out, secs = call([PY, os.path.join(HERE, "steps.py"), "generate", export], TIMEOUTS["generate"], os.path.join(logs, "generate.log"))
    row["seconds"]["generate"] = round(secs, 1)
    if "EXPORT_LOADED" not in out:
        return fail("exports", out)
    row["exports"] = "yes"
    if code != 0:
        return fail("generates", out)
    row["generates"] = "yes"
    row["generated"] = out.strip().splitlines()[-1][:120]
    if not ok:
        row["category"] = "unsupported by our collator or module"
        row["reason"] = f"labels: {why}"
        row["failed_step"] = "labels"
    else:
        row["category"] = "no chat template (generic used)"
    return row


def matrix_types() -> set[str]:
    """Model types the test suite trains on builders written for them (tests/families): the README's family table."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from families import FAMILIES

    import transformers

    classes = {f.model_class for f in FAMILIES}
    # A class several types share counts for its own type only (ShieldGemma 2 runs Gemma 3's class on its own config).
    return {t for t, c in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items()
            if c in classes and getattr(transformers, c).config_class.model_type == t}


def write_tables(results: dict, out: str, versions: str, wall: float | None) -> None:
    rows = [results[k] for k in sorted(results)]
    matrix = matrix_types()
    for r in rows:
        r["matrix"] = "yes" if r["model_type"] in matrix else ""
    cols = ["model_type", "model_class", *STEPS, "matrix", "template", "category", "reason", "where", "innermost"]
    with open(os.path.join(out, "coverage.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])
    e2e = sum(1 for r in rows if all(r.get(s) == "yes" for s in STEPS))
    trains = sum(1 for r in rows if r.get("trains") == "yes")
    builds = sum(1 for r in rows if r.get("builds") == "yes")
    counts: dict[str, int] = {}
    for r in rows:
        if not all(r.get(s) == "yes" for s in STEPS):
            counts[r["category"]] = counts.get(r["category"], 0) + 1
    md = [
        "# Coverage: curriculum on every image-text-to-text model type",
        "",
        f"Generated by `experiments/coverage/run.py` on {datetime.date.today().isoformat()} with {versions}"
        + (f"; the last sweep took {wall / 60:.1f} min" if wall else "") + ".",
        "",
        f"**{e2e} of {len(rows)} train end to end** (build, answers-only labels, two-stage training, export, `from_pretrained` + `generate`); "
        f"{builds} of {len(rows)} build a tiny checkpoint, {trains} of {len(rows)} train two stages.",
        "",
        f"{len(matrix & {r['model_type'] for r in rows})} types are in the test suite's matrix (`matrix`: trained, labelled, exported "
        "and packed or refused in `tests/`, on a tiny builder written for the family: `tests/families/`); "
        f"{sum(1 for r in rows if r['matrix'] and r.get('builds') != 'yes')} of them are builder gaps here, where one generic builder "
        f"makes every checkpoint. Together: **{len({r['model_type'] for r in rows if r['matrix'] or all(r.get(s) == 'yes' for s in STEPS)})} "
        f"of {len(rows)} types train**.",
        "",
        "Types that do not pass every step, by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + ".",
        "",
        "`yes` passed, `no` failed (the reason is that step's), `-` not run after an earlier failure. `template`: generic = our ChatML-like "
        "template (transformers ships no chat template for any type: they live in the hub repos). `where`: the innermost curriculum frame "
        "of the traceback.",
        "",
        "| model type | builds | labels | trains | exports | generates | matrix | category | reason | where |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reason = (r.get("reason") or "").replace("|", "\\|").replace("\n", " ")[:220]
        md.append(f"| {r['model_type']} | {r['builds']} | {r['labels']} | {r['trains']} | {r['exports']} | {r['generates']} | "
                  f"{r['matrix']} | {r['category']} | {reason} | {r.get('where', '')} |")
    with open(os.path.join(out, "coverage.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def main() -> int:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", help="comma-separated model types (default: all of the installed transformers' mapping)")
    ap.add_argument("--out", default=HERE, help="where results.json, coverage.csv and coverage.md go")
    ap.add_argument("--work", default="/tmp/coverage-work", help="tiny checkpoints, run folders and step logs")
    ap.add_argument("--jobs", type=int, default=1, help="types run at once")
    args = ap.parse_args()
    types = args.types.split(",") if args.types else list(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    unknown = [t for t in types if t not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES]
    if unknown:
        print(f"error: not in transformers {transformers.__version__}'s image-text-to-text mapping: {', '.join(unknown)}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    import torch

    versions = f"transformers {transformers.__version__}, torch {torch.__version__}"
    start = time.time()

    def one(t: str) -> dict:
        t0 = time.time()
        r = run_type(t, args.work)
        r["total_seconds"] = round(time.time() - t0, 1)
        status = "end to end" if all(r.get(s) == "yes" for s in STEPS) else f"{r['category']}: {r['reason'][:140]}"
        print(f"{t:28s} {' '.join((r[s] or '?')[:3].ljust(3) for s in STEPS)}  {r['total_seconds']:6.1f}s  {status}", flush=True)
        return r

    print(f"{len(types)} types, {versions}; work folder {args.work}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(one, types):
            results[r["model_type"]] = r
            with open(path, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)
    wall = time.time() - start
    meta_path = os.path.join(args.out, "sweep.json")
    if not args.types:
        json.dump({"wall_seconds": round(wall), "types": len(types), "versions": versions, "date": datetime.date.today().isoformat(),
                   "jobs": args.jobs}, open(meta_path, "w"), indent=1)
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}
    write_tables(results, args.out, versions, meta.get("wall_seconds"))
    print(f"{len(types)} types in {wall / 60:.1f} min; tables: {os.path.join(args.out, 'coverage.md')}, coverage.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
