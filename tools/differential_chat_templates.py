#!/usr/bin/env python3
"""Differential check of minitron's Jinja subset against Python's Jinja2 set up as transformers'
apply_chat_template sets it up: mutates the committed test templates and the real ones in the
tokenizer cache (character edits and inserted Jinja fragments), renders every mutant with both on
one conversation, and reports where the two disagree: different text, or only one of them refusing.
Most mutants are refused by both; the point is that the ones either accepts agree byte for byte.

    python3 tools/differential_chat_templates.py build/minitron [--mutants 1000] [--seed 1]
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("MINITRON_TOKENIZER_CACHE", os.path.expanduser("~/.cache/minitron/tokenizers"))
FRAGMENTS = ["{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "(", ")", "'", "|", " ", "\n", "\n  ", "\t", "1", "0",
             " ~ ", " + ", " if ", " else ", " not ", " and ", " or ", " in ", " is defined", " is string",
             " | trim", " | length", " | tojson", " | first", "[1:]", "[::-1]", "[-1]", "loop.index", "loop.last",
             "(1, 2)", "[1, 2]", '{"a": 1}', "none", "true", "2.5", " // 2", " % 2", "{%- ", " -%}", "{{- ", " -}}",
             "{% if true %}", "{% endif %}", "{% set y = 3 %}", "{{ y }}", "messages[0]", ".content"]
MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "<think>a</think>b"}, {"role": "user", "content": "u"}]


def seeds():
    texts = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(f"{REPO}/tests/data/chat_templates/*.jinja"))]
    for config in sorted(glob.glob(f"{CACHE}/*/tokenizer_config.json")):
        template = json.load(open(config, encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            texts.append(template)
    return texts


def mutate(text, rng):
    for _ in range(rng.randint(1, 3)):
        if not text:
            break
        at = rng.randrange(len(text))
        kind = rng.randrange(3)
        if kind == 0:
            text = text[:at] + text[at + 1 + rng.randrange(3):]
        elif kind == 1:
            text = text[:at] + rng.choice(FRAGMENTS) + text[at:]
        else:
            text = text[:at] + rng.choice(" \n\t-+{}%#") + text[at + 1:]
    return text


def jinja2_render(env, text, add_generation_prompt):
    try:
        return ("text", env.from_string(text).render(messages=MESSAGES, add_generation_prompt=add_generation_prompt,
                                                      bos_token="<s>", eos_token="</s>", tools=None, documents=None))
    except Exception as e:  # any refusal: syntax, undefined, type errors, raise_exception
        return ("error", repr(e))


def minitron_render(binary, work, text, add_generation_prompt):
    template = os.path.join(work, "template.jinja")
    with open(template, "w", encoding="utf-8") as f:
        f.write(text)
    command = [binary, "tokenizer", "chat", "--tokenizer-config", os.path.join(work, "tokenizer_config.json"),
               "--conversation", os.path.join(work, "conversation.json"), "--chat-template", template]
    if add_generation_prompt:
        command.append("--add-generation-prompt")
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        return ("error", result.stderr.decode("utf-8", "replace").strip())
    return ("text", result.stdout.decode("utf-8", "replace"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("minitron")
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(TemplateError(message))
    rng = random.Random(args.seed)
    texts = seeds()
    counts = {"agree": 0, "both refuse": 0, "differ": 0, "only minitron refuses": 0, "only Jinja2 refuses": 0}
    with tempfile.TemporaryDirectory() as work:
        json.dump({"bos_token": "<s>", "eos_token": "</s>"}, open(os.path.join(work, "tokenizer_config.json"), "w"))
        json.dump(MESSAGES, open(os.path.join(work, "conversation.json"), "w"))
        for _ in range(args.mutants):
            text = mutate(rng.choice(texts), rng)
            add_generation_prompt = rng.random() < 0.5
            theirs = jinja2_render(env, text, add_generation_prompt)
            ours = minitron_render(args.minitron, work, text, add_generation_prompt)
            if theirs[0] == "error" and ours[0] == "error":
                counts["both refuse"] += 1
                continue
            if theirs == ours:
                counts["agree"] += 1
                continue
            kind = "differ" if theirs[0] == ours[0] else (
                "only minitron refuses" if ours[0] == "error" else "only Jinja2 refuses")
            counts[kind] += 1
            print(f"{kind.upper()}:\n  template: {text!r}\n  Jinja2:   {theirs[1][:400]!r}\n  minitron: {ours[1][:400]!r}")
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0 if counts["agree"] + counts["both refuse"] == args.mutants else 1


if __name__ == "__main__":
    sys.exit(main())
