"""Expected values for minitron's evaluation tests (tests/eval/), computed independently of the
C++ code under test:

  - tests/eval/data/tokenizer.json: a tiny character-level BPE tokenizer (67 ids, the
    vocab_size of tests/fixtures/llama3_gqa) — the test input, written here;
  - tests/eval/data/expected_scores.json: for each test run (task file, shots, max length),
    the (context, continuation) strings lm-evaluation-harness builds, their token ids, the
    continuation log-likelihoods under the fixture model, and acc / acc_norm with stderrs.

The task formatting below is re-implemented from the harness sources (EleutherAI/
lm-evaluation-harness: lm_eval/tasks/hellaswag/utils.py, lm_eval/tasks/winogrande/
preprocess_winogrande.py, lm_eval/tasks/mmlu/default/_default_template_yaml, lm_eval/tasks/arc/
arc_easy.yaml, lm_eval/api/samplers.py, lm_eval/api/model.py `_encode_pair`, lm_eval/models/
huggingface.py `_loglikelihood_tokens`, lm_eval/api/metrics.py `mean_stderr`,
`pooled_sample_stderr`); the tokenizer is applied by a plain BPE written here; the model is
tools/llama_reference.py run in float64 on the fixture's float32 weights.

Run: /usr/bin/python3 tools/make_eval_fixtures.py   (deterministic; a few seconds)
"""

import json
import math
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import llama_reference as ref  # noqa: E402
from make_python_random_fixture import harness_select  # noqa: E402  (lm_eval/api/samplers.py)
import safetensors_io  # noqa: E402

DATA = os.path.join(ROOT, "tests", "eval", "data")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "llama3_gqa")

# ----------------------------------------------------------------------------- tokenizer

CHARS = [" ", "\n"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
        [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list(".,:?'-_")
MERGES = [("t", "h"), ("th", "e"), (" ", "the")]


def build_vocab():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in CHARS:
        vocab[c] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    return vocab


VOCAB = build_vocab()
assert len(VOCAB) == 67, len(VOCAB)


def tokenizer_json():
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": VOCAB, "merges": [f"{a} {b}" for a, b in MERGES]},
    }


def encode(text):
    """BPE over the whole text (no pre-tokenizer): characters, then the lowest-ranked adjacent
    pair merged everywhere, repeated."""
    parts = list(text)
    rank = {pair: i for i, pair in enumerate(MERGES)}
    while True:
        pairs = [(rank[(parts[i], parts[i + 1])], i) for i in range(len(parts) - 1) if (parts[i], parts[i + 1]) in rank]
        if not pairs:
            break
        best = min(pairs)[0]
        a, b = MERGES[best]
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return [VOCAB.get(p, 0) for p in parts]


# ----------------------------------------------------------------------------- harness tasks

def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def process(task, doc):
    """Returns (doc_to_text, choices, gold, subject, winogrande target)."""
    if task == "hellaswag":
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return (hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
                [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]), None, None)
    if task == "winogrande":
        idx = doc["sentence"].index("_")
        return (doc["sentence"][:idx], [doc["option1"], doc["option2"]], {"1": 0, "2": 1}[doc["answer"]], None,
                doc["sentence"][idx + 1:].strip())
    if task == "mmlu":
        c = doc["choices"]
        text = f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
        answer = doc["answer"] if isinstance(doc["answer"], int) else "ABCD".index(doc["answer"])
        return text, ["A", "B", "C", "D"], answer, doc["subject"], None
    if task in ("arc_easy", "arc_challenge"):
        return ("Question: " + doc["question"] + "\nAnswer:", doc["choices"]["text"],
                doc["choices"]["label"].index(doc["answerKey"]), None, None)
    if task == "multiple_choice":
        return doc["context"], doc["choices"], int(doc["label"]), None, None
    raise ValueError(task)


def fewshot_example(task, p):
    text, choices, gold, _, target = p
    if task == "winogrande":
        return text + choices[gold] + " " + target
    return text + " " + choices[gold]


def requests_for(task, p, pool, self_index, shots, picks=None):
    text, choices, gold, subject, target = p
    chosen = [] if picks is None else [pool[j] for j in picks]  # picks: the harness's random draw
    for j, q in enumerate(pool if picks is None else []):
        if len(chosen) >= shots:
            break
        if j == self_index:
            continue
        if task == "mmlu" and q[3] != subject:
            continue
        chosen.append(q)
    assert len(chosen) == shots
    prefix = ""
    if task == "mmlu":
        prefix = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    prefix += "".join(fewshot_example(task, q) + "\n\n" for q in chosen)
    if task == "winogrande":
        return [(prefix + text + c, " " + target) for c in choices]
    return [(prefix + text, " " + c) for c in choices]


def encode_pair(context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    context_enc = encode(context)
    return context_enc, whole[len(context_enc):]


def mean_stderr(xs):
    if len(xs) < 2:
        return None
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


# ----------------------------------------------------------------------------- model

def load_model():
    config = ref.load_config(os.path.join(FIXTURE, "config.json"))
    model = ref.LlamaForCausalLM(config).double()
    weights, _ = safetensors_io.load_file(os.path.join(FIXTURE, "model.safetensors"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[name].astype(np.float64)))
    return model


def loglikelihood(model, context_enc, continuation_enc, max_length):
    full = (context_enc + continuation_enc)[-(max_length + 1):]
    inp = torch.tensor([full[:-1]], dtype=torch.long)
    with torch.no_grad():
        logits, _ = model(inp)
    logp = torch.log_softmax(logits[0], dim=-1)
    n = len(continuation_enc)
    rows = logp[len(full) - 1 - n:len(full) - 1]
    return float(sum(rows[i, continuation_enc[i]] for i in range(n)))


RUNS = [
    {"name": "hellaswag_0shot", "task": "hellaswag", "task_file": "hellaswag.jsonl", "shots": 0},
    {"name": "winogrande_0shot", "task": "winogrande", "task_file": "winogrande.jsonl", "shots": 0},
    {"name": "winogrande_1shot", "task": "winogrande", "task_file": "winogrande.jsonl", "shots": 1},
    {"name": "mmlu_1shot", "task": "mmlu", "task_file": "mmlu_test.jsonl", "fewshot_file": "mmlu_dev.jsonl", "shots": 1},
    {"name": "arc_easy_2shot", "task": "arc_easy", "task_file": "arc_easy.jsonl", "shots": 2},
    {"name": "multiple_choice_0shot", "task": "multiple_choice", "task_file": "multiple_choice.jsonl", "shots": 0},
    {"name": "multiple_choice_truncated", "task": "multiple_choice", "task_file": "multiple_choice.jsonl", "shots": 0,
     "max_length": 30},
    # tools/make_cloze_task.py --count 6 (Austen corpus), scored as generic multiple choice.
    {"name": "cloze_austen_0shot", "task": "multiple_choice", "task_file": "cloze_austen.jsonl", "shots": 0},
]


def read_jsonl(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run(model, spec):
    task = spec["task"]
    docs = [process(task, d) for d in read_jsonl(spec["task_file"])]
    pool = [process(task, d) for d in read_jsonl(spec["fewshot_file"])] if spec.get("fewshot_file") else docs
    max_length = spec.get("max_length", 2048)
    questions = []
    raw = read_jsonl(spec["task_file"])
    picks = harness_select(task, read_jsonl(spec["fewshot_file"]) if spec.get("fewshot_file") else raw, raw, spec["shots"],
                           not spec.get("fewshot_file")) if task != "mmlu" and spec["shots"] else [None] * len(docs)
    for i, p in enumerate(docs):
        reqs = requests_for(task, p, pool, None if spec.get("fewshot_file") else i, spec["shots"], picks[i])
        out = []
        for context, continuation in reqs:
            c_enc, k_enc = encode_pair(context, continuation)
            out.append({"context": context, "continuation": continuation, "context_ids": c_enc,
                        "continuation_ids": k_enc, "loglikelihood": loglikelihood(model, c_enc, k_enc, max_length)})
        lls = np.array([r["loglikelihood"] for r in out])
        lengths = np.array([float(len(c)) for c in p[1]])
        questions.append({"requests": out, "gold": p[2], "subject": p[3], "choice_lengths": [len(c) for c in p[1]],
                          "acc": float(np.argmax(lls) == p[2]), "acc_norm": float(np.argmax(lls / lengths) == p[2])})
    metrics = []
    if task == "mmlu":
        subjects = sorted({q["subject"] for q in questions})
        stderrs, sizes = [], []
        for s in subjects:
            xs = [q["acc"] for q in questions if q["subject"] == s]
            metrics.append({"task": "mmlu_" + s, "metric": "acc", "value": sum(xs) / len(xs),
                            "stderr": mean_stderr(xs), "count": len(xs)})
            stderrs.append(mean_stderr(xs) or 0.0)
            sizes.append(len(xs))
        xs = [q["acc"] for q in questions]
        pooled = sum((n - 1) * s * s * n for n, s in zip(sizes, stderrs)) / (sum(sizes) - len(sizes))
        metrics.append({"task": "mmlu", "metric": "acc", "value": sum(xs) / len(xs),
                        "stderr": math.sqrt(pooled / sum(sizes)), "count": len(xs)})
    else:
        names = ["acc"] if task == "winogrande" else ["acc", "acc_norm"]
        for m in names:
            xs = [q[m] for q in questions]
            metrics.append({"task": task, "metric": m, "value": sum(xs) / len(xs), "stderr": mean_stderr(xs),
                            "count": len(xs)})
    return dict(spec, max_length=max_length, questions=questions, metrics=metrics)


def main():
    torch.set_num_threads(1)
    with open(os.path.join(DATA, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(), f, indent=1, ensure_ascii=False)
        f.write("\n")
    model = load_model()
    out = {"model": "tests/fixtures/llama3_gqa", "tokenizer": "tests/eval/data/tokenizer.json",
           "precision": "log-likelihoods computed in float64 from the float32 checkpoint",
           "runs": [run(model, spec) for spec in RUNS]}
    text = json.dumps(out, indent=1, ensure_ascii=False)
    # Token id lists on one line each (the file is committed; keep it readable and small).
    text = re.sub(r"\[(\s*-?\d+,?)+\s*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    with open(os.path.join(DATA, "expected_scores.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    for r in out["runs"]:
        print(r["name"], [(m["task"], m["metric"], round(m["value"], 4)) for m in r["metrics"]])


if __name__ == "__main__":
    main()
