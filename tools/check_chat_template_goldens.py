#!/usr/bin/env python3
"""Checks tests/data/chat_template_goldens.json (written by @huggingface/jinja, see
tools/make_chat_template_goldens.mjs) against Python's Jinja2 set up as transformers'
apply_chat_template sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, its tojson and raise_exception), so the goldens are what transformers renders,
not only what the JS port renders. Templates from the tokenizer cache are skipped when absent.

    python3 tools/check_chat_template_goldens.py     # needs `pip install jinja2`; exit 1 on a difference
"""
import difflib
import json
import os
import sys

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("MINITRON_TOKENIZER_CACHE", os.path.expanduser("~/.cache/minitron/tokenizers"))


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def token_text(token):
    return token if isinstance(token, str) or token is None else token["content"]


def load_templates(spec):
    templates = {}
    for entry in spec["templates"]:
        if "file" in entry:
            with open(os.path.join(REPO, entry["file"]), encoding="utf-8") as f:
                templates[entry["name"]] = (f.read(), entry["bos_token"], entry["eos_token"])
            continue
        path = os.path.join(CACHE, entry["cache"], "tokenizer_config.json")
        if not os.path.exists(path):
            print(f"skipping {entry['name']}: {path} absent (run tools/fetch_tokenizers.sh)")
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        text = config["chat_template"]
        if isinstance(text, list):
            text = next(t["template"] for t in text if t["name"] == "default")
        templates[entry["name"]] = (text, token_text(config.get("bos_token")) or "",
                                    token_text(config.get("eos_token")) or "")
    return templates


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    with open(os.path.join(REPO, "tests/data/chat_template_conversations.json"), encoding="utf-8") as f:
        spec = json.load(f)
    with open(os.path.join(REPO, "tests/data/chat_template_goldens.json"), encoding="utf-8") as f:
        goldens = json.load(f)["renderings"]
    templates = load_templates(spec)
    conversations = {c["name"]: c for c in spec["conversations"]}
    same = different = 0
    for golden in goldens:
        if golden["template"] not in templates:
            continue
        text, bos, eos = templates[golden["template"]]
        conversation = conversations[golden["conversation"]]
        try:
            variables = {"tools": None, "documents": None, **conversation.get("variables", {})}
            rendered = ("text", env.from_string(text).render(
                messages=conversation["messages"], add_generation_prompt=golden["add_generation_prompt"],
                bos_token=bos, eos_token=eos, **variables))
        except TemplateError as e:
            rendered = ("error", str(e))
        expected = ("text", golden["text"]) if "text" in golden else ("error", golden["error"])
        if rendered == expected:
            same += 1
            continue
        different += 1
        print(f"DIFFERS: {golden['template']} on {golden['conversation']}, "
              f"add_generation_prompt={golden['add_generation_prompt']} (- @huggingface/jinja, + Jinja2)")
        print("\n".join(difflib.unified_diff(expected[1].split("\n"), rendered[1].split("\n"), lineterm="")))
    print(f"{same} renderings the same in Jinja2, {different} different")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
