"""Expected values for eval/python_random.* and the harness's few-shot selection
(tests/eval/test_python_random.cpp), produced by CPython itself:

  - `random.Random(seed)` streams: getrandbits(k), _randbelow(n) and sample(range(n), k) on
    both of sample()'s code paths (the pool list when n <= setsize, the selected set beyond);
  - the documents lm-evaluation-harness picks as few-shot examples for small hand-made task
    files, by a re-implementation of its selection written here from the harness sources:
      lm_eval/api/samplers.py  ContextSampler.get_context: n_samples = num_fewshot + 1 if
                               config.fewshot_split == config.test_split else num_fewshot;
                               fewshotex = self.sample(n_samples) (= self.rnd.sample(self.docs, n));
                               selected_docs = [x for x in fewshotex if x != doc][:num_fewshot]
      lm_eval/api/task.py      ConfigurableTask.__init__: one sampler per task over
                               list(self.fewshot_docs()) with rnd = self.fewshot_rnd;
                               Task.set_fewshot_seed: fewshot_rnd = random.Random(seed);
                               Task.build_all_requests: fewshot_context() per document, in order
      lm_eval/evaluator.py     simple_evaluate(fewshot_random_seed=1234): set_fewshot_seed once
                               per task before the requests are built
      lm_eval/tasks/{hellaswag/hellaswag.yaml, winogrande/default.yaml, arc/arc_easy.yaml}:
                               which of test_split / fewshot_split each sets.

Run: /usr/bin/python3 tools/make_python_random_fixture.py   (deterministic, instant)
"""

import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "eval", "data", "python_random.json")

SEEDS = [0, 1, 42, 1234, -1234, 2**32 - 1, 2**32 + 5, 2**63 - 1]
BITS = [1, 5, 31, 32, 33, 63, 64, 100]
BELOW = [1, 2, 3, 7, 10, 1000, 2**31, 2**32 + 1, 2**63 + 12345]
# (n, k): pool-list path when n <= setsize (21, plus 4 ** ceil(log(3k, 4)) when k > 5).
SAMPLES = [(1, 1), (10, 3), (21, 5), (5, 5), (26, 6), (85, 6), (22, 5), (100, 3), (86, 6), (1000, 10), (30, 0)]


def setsize(k):
    import math
    s = 21
    if k > 5:
        s += 4 ** math.ceil(math.log(k * 3, 4))
    return s


def streams():
    out = []
    for seed in SEEDS:
        r = random.Random(seed)
        entry = {"seed": seed, "genrand_uint32": [r.getrandbits(32) for _ in range(8)]}
        # Hex strings: values up to 2**100 do not fit a JSON number exactly.
        entry["getrandbits"] = [{"k": k, "value": hex(r.getrandbits(k))} for k in BITS for _ in range(3)]
        entry["randbelow"] = [{"n": str(n), "value": str(r._randbelow(n))} for n in BELOW for _ in range(3)]
        entry["sample"] = [{"n": n, "k": k, "path": "pool" if n <= setsize(k) else "set",
                            "value": r.sample(range(n), k)} for n, k in SAMPLES]
        out.append(entry)
    return out


# ------------------------------------------------------------------ harness few-shot selection

# The split fields of the harness's yaml files (None where the yaml leaves them unset).
YAML_SPLITS = {
    "hellaswag": {"test_split": None, "fewshot_split": None},
    "winogrande": {"test_split": None, "fewshot_split": None},
    "arc_easy": {"test_split": "test", "fewshot_split": None},
    "multiple_choice": {"test_split": "test", "fewshot_split": None},
}


def harness_select(task, pool, docs, shots, pool_is_eval_docs):
    """Pool indices of each document's few-shot examples, documents taken in order."""
    test_split = YAML_SPLITS[task]["test_split"]
    # Examples from the evaluated split itself: the harness's config then has
    # fewshot_split == test_split.
    fewshot_split = test_split if pool_is_eval_docs else YAML_SPLITS[task]["fewshot_split"]
    rnd = random.Random(1234)
    picks = []
    for doc in docs:
        n_samples = shots + 1 if fewshot_split == test_split else shots
        fewshotex = rnd.sample(pool, n_samples)
        selected = [x for x in fewshotex if x != doc][:shots]
        picks.append([next(i for i, p in enumerate(pool) if p is x) for x in selected])
    return picks


def hellaswag_doc(i):
    return {"ind": i, "activity_label": f"Activity {i}", "ctx_a": f"Someone does thing {i}.", "ctx_b": "then",
            "endings": [f"ending {i} a", f"ending {i} b", f"ending {i} c", f"ending {i} d"], "label": str(i % 4)}


def winogrande_doc(i):
    return {"sentence": f"Sam gave Alex the book number {i} because _ was done.", "option1": "Sam",
            "option2": "Alex", "answer": str(1 + i % 2)}


def arc_doc(i):
    return {"id": f"q{i}", "question": f"Question number {i}?",
            "choices": {"text": [f"yes {i}", f"no {i}", f"maybe {i}"], "label": ["A", "B", "C"]},
            "answerKey": "ABC"[i % 3]}


def mc_doc(i):
    return {"context": f"Context {i}:", "choices": [f"one {i}", f"two {i}"], "label": i % 2}


def selection_cases():
    cases = []

    def add(name, task, pool, docs, shots, pool_is_eval_docs):
        cases.append({"name": name, "task": task, "shots": shots, "pool_is_eval_docs": pool_is_eval_docs,
                      "pool": pool, "docs": None if pool_is_eval_docs else docs,
                      "expected": harness_select(task, pool, docs, shots, pool_is_eval_docs)})

    # A separate training split; hellaswag's yaml draws shots + 1 (None == None), keeps shots.
    add("hellaswag_train_pool", "hellaswag", [hellaswag_doc(i) for i in range(12)],
        [hellaswag_doc(100 + i) for i in range(5)], 3, False)
    # Few-shot examples from the evaluated file itself: the document is removed from its draw.
    wino = [winogrande_doc(i) for i in range(8)]
    add("winogrande_same_file", "winogrande", wino, wino, 2, True)
    # arc draws exactly shots; a 30-document pool takes sample()'s selected-set path.
    add("arc_train_pool_set_path", "arc_easy", [arc_doc(i) for i in range(30)], [arc_doc(200 + i) for i in range(4)],
        5, False)
    # A few-shot file that holds the evaluated documents: arc keeps fewer than shots when one is drawn.
    arc_pool = [arc_doc(i) for i in range(6)]
    add("arc_pool_holds_the_docs", "arc_easy", arc_pool, [dict(d) for d in arc_pool[:4]], 3, False)
    # 6 shots from a 30-document file: 7 draws, setsize 85, the pool-list path.
    mc = [mc_doc(i) for i in range(30)]
    add("multiple_choice_same_file_6shot", "multiple_choice", mc, mc, 6, True)
    return cases


def main():
    out = {"generator": "tools/make_python_random_fixture.py", "python": __import__("sys").version.split()[0],
           "streams": streams(), "fewshot": selection_cases()}
    # One line per list (the file is committed; keep it small and readable).
    def lines(obj, indent):
        pad = " " * indent
        return "{\n" + ",\n".join(f"{pad} {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items()) + "\n" + pad + "}"
    text = "{\n" + ",\n".join(
        f" {json.dumps(k)}: " + ("[\n" + ",\n".join("  " + lines(e, 2) for e in v) + "\n ]" if isinstance(v, list) else json.dumps(v))
        for k, v in out.items()) + "\n}"
    assert json.loads(text) == out
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
