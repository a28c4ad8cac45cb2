// Writes tests/data/goldens_<name>.json: the ids that an independent implementation of
// HF tokenizer.json (@huggingface/tokenizers, the tokenizer code of transformers.js) gives for
// a fixed list of tricky strings and a few KB of English, on the real tokenizer files that
// tools/fetch_tokenizers.sh put in the cache. Only strings and ids are written (no vocab).
//
//   tools/fetch_tokenizers.sh && node tools/make_tokenizer_goldens.mjs
//   node tools/make_tokenizer_goldens.mjs --dir DIR --name NAME   # any tokenizer dir, e.g. a
//       `minitron tokenizer train` output: writes tests/data/goldens_NAME.json
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import url from "node:url";

const cache = process.env.MINITRON_TOKENIZER_CACHE || path.join(os.homedir(), ".cache/minitron/tokenizers");
const repo = path.resolve(path.dirname(url.fileURLToPath(import.meta.url)), "..");
const { Tokenizer } = await import(
  url.pathToFileURL(path.join(cache, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs")).href);

const english = fs.readFileSync(path.join(repo, "tests/data/english_sample.txt"), "utf8");

export const tricky = [
  "Hello world",
  "Hello, World! How are you?",
  " leading space",
  "  two leading spaces",
  "trailing space ",
  "trailing spaces   ",
  "",
  " ",
  "   ",
  "\n",
  "\n\n\n",
  "a\nb\r\nc\rd",
  "line one\n\nline two\n   indented\n\ttabbed",
  "tabs\tand\t\tmore\t\t\ttabs",
  "I'm sure it's John's; they're we've you'll he'd",
  "IT'S LOUD, THEY'RE HERE, WE'VE GOT IT, I'LL GO, HE'D, I'M",
  "'s 'S 're 'RE 'Ve",
  "don't DON'T Don'T",
  "1 12 123 1234 12345 123456 1234567",
  "3.14159 and 2,718,281 and 1e10 and 0x1F",
  "phone: 555-123-4567, year 2024",
  "日本語のテキストです。中文文本。한국어 텍스트",
  "Café naïve résumé façade coöperate Ångström",
  "e\u0301 (combining accent) vs é",
  "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
  "mixed😀text😀without😀spaces",
  "Ελληνικά και русский текст и עברית ועربية",
  "symbols: @#$%^&*()_+-=[]{}|;':\",./<>?`~",
  "<|begin_of_text|>Hello<|end_of_text|>",
  "text <s> with </s> sentencepiece specials <unk>",
  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
  "no<|eot_id|>space<|eot_id|><|eot_id|>",
  "< s > <|not_special|> <|begin_of_text",
  "def f(x):\n    return x ** 2  # square\n",
  "    for i in range(10):\n        print(i)\n",
  "https://example.com/path?query=1&b=2#frag",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  "                                                  many spaces",
  "\u00a0non-breaking\u00a0spaces\u2003em space\u3000ideographic",
  "zero\u200bwidth\u200djoiner\ufeffbom",
  "control \u0001\u0002\u001f chars \u007f",
  "supplementary 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𠜎",
  "MiXeD CaSe WoRdS aNd ALLCAPS",
  "x",
  "🙂",
  english,
];

function goldens(name, dir = path.join(cache, name)) {
  const json = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const config = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const tok = new Tokenizer(json, config);
  const cases = tricky.map((text) => ({
    text,
    ids: Array.from(tok.encode(text, { add_special_tokens: false }).ids),
    ids_with_special: Array.from(tok.encode(text, { add_special_tokens: true }).ids),
  }));
  const out = path.join(repo, `tests/data/goldens_${name}.json`);
  fs.writeFileSync(out, JSON.stringify({ tokenizer: name, reference: "@huggingface/tokenizers", cases }, null, 0) + "\n");
  console.log(`${out}: ${cases.length} cases`);
}

const args = process.argv.slice(2);
if (args[0] === "--dir") {
  if (args.length !== 4 || args[2] !== "--name") throw new Error("usage: make_tokenizer_goldens.mjs --dir DIR --name NAME");
  goldens(args[3], path.resolve(args[1]));
} else {
  for (const name of args.length ? args : ["llama3", "llama3_1", "llama2"]) goldens(name);
}
