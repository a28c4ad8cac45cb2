"""A cloze task from the embedded Austen corpus (data/corpora/austen.txt.xz), in minitron's
generic multiple_choice JSONL layout ({"context", "choices", "label"}): each item is a sentence
with its last word removed; the choices are that word and distractor words drawn from other
sentences. Deterministic (a fixed seed, corpus order).

    /usr/bin/python3 tools/make_cloze_task.py --count 8 --out tests/eval/data/cloze_austen.jsonl
    minitron eval --model DIR --task multiple_choice --task-file cloze.jsonl

--charset restricts sentences to a set of characters (the tests' tiny tokenizer covers letters,
space and . , : ? ' - _ only).
"""

import argparse
import json
import lzma
import os
import random
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def sentences(text):
    text = re.sub(r"\s+", " ", text)
    for s in re.split(r"(?<=[.?!])\s+", text):
        s = s.strip()
        if 40 <= len(s) <= 160 and s.endswith("."):
            yield s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpora", "austen.txt.xz"))
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--charset", default=LETTERS + " .,:?'-_", help="allowed characters ('' = any)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with lzma.open(args.corpus, "rt", encoding="utf-8") as f:
        text = f.read()
    rng = random.Random(args.seed)
    pool = []
    for s in sentences(text):
        if args.charset and any(c not in args.charset for c in s):
            continue
        words = s[:-1].split(" ")
        last = words[-1]
        if len(words) < 6 or not last.isalpha() or not last.islower():
            continue
        pool.append((" ".join(words[:-1]), last))
    # Spread the items over the corpus: every k-th usable sentence.
    step = max(1, len(pool) // max(1, args.count))
    picked = pool[::step][:args.count]
    vocabulary = sorted({w for _, w in pool})
    items = []
    for context, answer in picked:
        distractors = []
        while len(distractors) < args.choices - 1:
            w = vocabulary[rng.randrange(len(vocabulary))]
            if w != answer and w not in distractors:
                distractors.append(w)
        choices = [answer] + distractors
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    with open(args.out, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{len(items)} items from {len(pool)} usable sentences -> {args.out}")


if __name__ == "__main__":
    main()
