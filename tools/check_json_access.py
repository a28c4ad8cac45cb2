#!/usr/bin/env python3
"""Fails when non-test code reads parsed JSON around util/checked_json.h (issue 22).

Every file minitron reads is untrusted, and nlohmann's converting accessors take whatever they
find: get<std::int32_t>() wraps 4294967297 to 1, truncates 7.5 to 7 and is undefined behaviour on
3.3e37. So outside util/checked_json.* (the one reader, which calls them only after checking the
type and range) and tests/, bench/ and tools/ (which read files they wrote themselves), code must
not call `.get<T>()`, `get_to`, `get_ref<`, `get_ptr<` or the defaulted lookup `.value("key", x)`
(matched with a literal key: other classes have value() methods too).
Building JSON to save it (`j["step"] = step`) is fine. Implicit conversions (`int n = j["n"]`) are
refused by the compiler instead: the libraries and the binary build with
JSON_USE_IMPLICIT_CONVERSIONS=0 (CMakeLists.txt, minitron_target_defaults).

Comments and string literals are skipped. Prints every offending call as path:line and exits 1.
"""
import pathlib
import re
import subprocess
import sys

EXEMPT_FOLDERS = ("tests/", "bench/", "tools/")
READER = ("util/checked_json.h", "util/checked_json.cpp")
# Readers of JSON whose key order is part of their output (chat templates print `tools | tojson`
# in the file's order, as transformers does): they work on nlohmann::ordered_json, which JsonField
# does not model yet, and read each value only right after the exact type test that makes it safe.
ORDERED_JSON_READERS = ("data/chat_template.cpp", "data/jinja_value.cpp")
ACCESS = re.compile(r'(\.|->)\s*(template\s+)?(get\s*<|get_to\s*\(|get_ref\s*<|get_ptr\s*<|value\s*\(\s*")')
LITERAL_OR_COMMENT = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def blank(match: re.Match) -> str:
    # Keeps the line count (and so every line number) of what is removed, and a string literal's
    # quotes, so that `.value("key", ...)` is still seen as a lookup by key.
    text = match.group(0)
    inner = "".join(c if c == "\n" else " " for c in text)
    return text[0] + inner[1:-1] + text[-1] if text[0] == '"' else inner


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "*.h", "*.cpp", "*.cu", "*.cuh"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    offences = []
    checked = 0
    for name in files:
        if name.startswith(EXEMPT_FOLDERS) or name in READER or name in ORDERED_JSON_READERS:
            continue
        checked += 1
        code = LITERAL_OR_COMMENT.sub(blank, (root / name).read_text(encoding="utf-8"))
        for number, line in enumerate(code.splitlines(), 1):
            if ACCESS.search(line):
                offences.append(f"{name}:{number}: reads JSON with nlohmann's converting accessors; "
                                "use JsonField (util/checked_json.h)")
    for offence in offences:
        print(offence)
    if offences:
        print(f"json access: {len(offences)} unchecked reads of parsed JSON")
        return 1
    print(f"json access: {checked} files checked, every JSON read goes through util/checked_json.h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
