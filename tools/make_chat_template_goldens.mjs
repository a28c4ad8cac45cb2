// Writes tests/data/chat_template_goldens.json: what an independent Jinja implementation,
// Hugging Face's @huggingface/jinja (the one transformers.js uses for apply_chat_template), renders
// for every template and conversation of tests/data/chat_template_conversations.json, with
// add_generation_prompt false and true. Templates come from the committed files or, for the real
// Llama ones (Meta's licence, never committed), from the tokenizer cache that
// tools/fetch_tokenizers.sh fills; only the rendered strings are written.
//
//   tools/fetch_tokenizers.sh && node tools/make_chat_template_goldens.mjs
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import url from "node:url";

const cache = process.env.MINITRON_TOKENIZER_CACHE || path.join(os.homedir(), ".cache/minitron/tokenizers");
const repo = path.resolve(path.dirname(url.fileURLToPath(import.meta.url)), "..");
const { Template } = await import(
  url.pathToFileURL(path.join(cache, "node_modules/@huggingface/jinja/dist/index.js")).href);

const spec = JSON.parse(fs.readFileSync(path.join(repo, "tests/data/chat_template_conversations.json"), "utf8"));

function tokenText(token) {
  if (token === undefined || token === null) return "";
  return typeof token === "string" ? token : token.content;
}

function loadTemplate(entry) {
  if (entry.file) {
    return { text: fs.readFileSync(path.join(repo, entry.file), "utf8"), bos: entry.bos_token, eos: entry.eos_token };
  }
  const configPath = path.join(cache, entry.cache, "tokenizer_config.json");
  if (!fs.existsSync(configPath)) return null;
  const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
  let text = config.chat_template;
  if (Array.isArray(text)) text = text.find((t) => t.name === "default").template;
  return { text, bos: tokenText(config.bos_token), eos: tokenText(config.eos_token) };
}

const renderings = [];
for (const entry of spec.templates) {
  const loaded = loadTemplate(entry);
  if (!loaded) {
    console.error(`skipping ${entry.name}: not in ${cache} (run tools/fetch_tokenizers.sh)`);
    continue;
  }
  const template = new Template(loaded.text);
  for (const conversation of spec.conversations) {
    for (const addGenerationPrompt of [false, true]) {
      const record = { template: entry.name, conversation: conversation.name, add_generation_prompt: addGenerationPrompt };
      try {
        record.text = template.render({
          messages: conversation.messages,
          add_generation_prompt: addGenerationPrompt,
          bos_token: loaded.bos,
          eos_token: loaded.eos,
          // transformers' apply_chat_template always passes these, None unless given.
          tools: null,
          documents: null,
          ...(conversation.variables || {}),
        });
      } catch (error) {
        record.error = String(error.message);
      }
      renderings.push(record);
    }
  }
}

const out = path.join(repo, "tests/data/chat_template_goldens.json");
const header = { generator: "tools/make_chat_template_goldens.mjs", renderer: "@huggingface/jinja" };
fs.writeFileSync(out, JSON.stringify({ ...header, renderings }, null, 1) + "\n");
console.log(`wrote ${renderings.length} renderings to ${out}`);
