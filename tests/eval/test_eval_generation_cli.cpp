// `minitron eval` end to end on a model whose outputs are known in closed form: one layer with
// every attention and MLP weight zero, one-hot embeddings and an LM head with one 1 per column,
// so the logits at a position depend only on its token t: s at successor(t), 0 elsewhere, with
// s = 1 / sqrt(1/H + eps) from the final RMSNorm (a token without a successor: all logits 0).
// Greedy generation follows the successor chain; each continuation token's log-probability is
// one of three numbers written below. Expected scores are computed here from those formulas, not
// by the code under test. Also: data-parallel ranks give one process's numbers, the suite's
// table and harness JSON, the length limit, chat templates, and bad input.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/parameters.h"
#include "tests/eval/suite_task_files.h"
#include "util/error.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kVocab = 97;  // "</s>", printable ASCII 32..126, "\n"
constexpr int kHidden = 128;
constexpr double kEps = 1e-5;

int token_of(char c) { return c == '\n' ? 96 : c - 31; }

// The successor chain: after "Answer:" (or "A:") greedy decoding writes " 42\nQuestion: 42\n...".
const std::map<char, char> kNext = {{':', ' '}, {' ', '4'}, {'4', '2'}, {'2', '\n'}, {'\n', 'Q'},
                                    {'Q', 'u'}, {'u', 'e'}, {'e', 's'}, {'s', 't'},  {'t', 'i'},
                                    {'i', 'o'}, {'o', 'n'}, {'n', ':'}};

// log p(next token | previous token), from the logits above.
const double kScale = 1.0 / std::sqrt(1.0 / kHidden + kEps);
const double kHit = kScale - std::log(std::exp(kScale) + (kVocab - 1));  // the successor
const double kMiss = -std::log(std::exp(kScale) + (kVocab - 1));         // another token, after one with a successor
const double kUniform = -std::log(static_cast<double>(kVocab));          // after a token with no successor

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write(const fs::path& p, const std::string& text) {
  std::ofstream out(p);
  out << text;
}

struct CommandResult {
  int status;
  std::string out, err;
};

class EvalGenerationCli : public ::testing::Test {
 protected:
  static fs::path dir_;

  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("minitron_eval_gen_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const json config_json = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"vocab_size", kVocab},
                              {"hidden_size", kHidden},
                              {"intermediate_size", 8},
                              {"num_hidden_layers", 1},
                              {"num_attention_heads", 4},
                              {"num_key_value_heads", 2},
                              {"rope_theta", 10000.0},
                              {"rms_norm_eps", kEps},
                              {"max_position_embeddings", 2048},
                              {"tie_word_embeddings", false},
                              {"hidden_act", "silu"},
                              {"eos_token_id", 0},
                              {"torch_dtype", "float32"}};
    const ModelConfig config = parse_model_config(config_json);
    const ParameterTable table(config);
    std::vector<float> params(static_cast<std::size_t>(table.total_numel()), 0.0f);
    auto at = [&](const std::string& name) { return params.data() + table.find(name)->offset; };
    for (int t = 0; t < kVocab; ++t) at("model.embed_tokens.weight")[t * kHidden + t] = 1.0f;
    for (const char* norm : {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                             "model.norm.weight"})
      for (int i = 0; i < kHidden; ++i) at(norm)[i] = 1.0f;
    for (const auto& [from, to] : kNext) at("lm_head.weight")[token_of(to) * kHidden + token_of(from)] = 1.0f;
    SaveOptions save;
    save.dtype = SafetensorsDType::F32;
    save_checkpoint(dir_ / "model", config, table, params, save);

    json vocab = {{"</s>", 0}};
    for (int c = 32; c <= 126; ++c) vocab[std::string(1, static_cast<char>(c))] = token_of(static_cast<char>(c));
    vocab["\n"] = 96;
    const json tokenizer = {{"version", "1.0"},
                            {"truncation", nullptr},
                            {"padding", nullptr},
                            {"added_tokens",
                             {{{"id", 0},
                               {"content", "</s>"},
                               {"single_word", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"normalized", false},
                               {"special", true}}}},
                            {"normalizer", nullptr},
                            {"pre_tokenizer", nullptr},
                            {"post_processor", nullptr},
                            {"decoder", {{"type", "Fuse"}}},
                            {"model",
                             {{"type", "BPE"},
                              {"dropout", nullptr},
                              {"unk_token", nullptr},
                              {"continuing_subword_prefix", nullptr},
                              {"end_of_word_suffix", nullptr},
                              {"fuse_unk", false},
                              {"byte_fallback", false},
                              {"vocab", vocab},
                              {"merges", json::array()}}}};
    write(dir_ / "model/tokenizer.json", tokenizer.dump());
    const json tokenizer_config = {{"eos_token", "</s>"},
                                   {"chat_template",
                                    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                                    "{% if add_generation_prompt %}<|assistant|>{% endif %}"}};
    write(dir_ / "model/tokenizer_config.json", tokenizer_config.dump());
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::string data(const std::string& name) {
    return (fs::path(MINITRON_SOURCE_DIR) / "tests/eval/data" / name).string();
  }

  static CommandResult run(const std::string& args) {
    const fs::path out = dir_ / "out.txt", err = dir_ / "err.txt";
    const std::string command = str(MINITRON_BINARY, " eval --device cpu --model ", (dir_ / "model").string(), " ",
                                    args, " > ", out.string(), " 2> ", err.string());
    const int raw = std::system(command.c_str());
    return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(out), slurp(err)};
  }

  static json run_json(const std::string& args) {
    const CommandResult r = run(args + " --json");
    EXPECT_EQ(r.status, 0) << r.err;
    return json::parse(r.out);
  }
};
fs::path EvalGenerationCli::dir_;

const json* find_result(const json& out, const std::string& metric, const std::string& filter) {
  for (const json& row : out["results"])
    if (row["metric"] == metric && row["filter"] == filter) return &row;
  return nullptr;
}

// Every prompt ends in "Answer:": the chain writes " 42\nQuestion:", cut at "Question:" to " 42\n".
// strict-match finds no "#### ": 0 of 3; flexible-extract gives "42": right for the first
// document only (7 and 1,042 are the others' answers).
TEST_F(EvalGenerationCli, Gsm8kScoresTheSuccessorChain) {
  const json out = run_json("--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 0");
  const json* strict = find_result(out, "exact_match", "strict-match");
  const json* flexible = find_result(out, "exact_match", "flexible-extract");
  ASSERT_TRUE(strict && flexible) << out.dump();
  EXPECT_EQ((*strict)["value"].get<double>(), 0.0);
  EXPECT_NEAR((*flexible)["value"].get<double>(), 1.0 / 3, 1e-15);   // a mean of 0/1 scores
  EXPECT_NEAR((*flexible)["stderr"].get<double>(), 1.0 / 3, 1e-15);  // sqrt((1/3)(2/3)/2)
  EXPECT_EQ(out["generations_at_length_limit"], 0);
}

// --max-gen-toks 3 stops at " 42" (no stop sequence, no EOS): scored as it stands, counted.
// At 2 tokens " 4" is right for no document.
TEST_F(EvalGenerationCli, Gsm8kGenerationsAtTheLengthLimitAreScoredAndCounted) {
  json out = run_json("--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 0 --max-gen-toks 3");
  EXPECT_EQ(out["generations_at_length_limit"], 3);
  EXPECT_NEAR((*find_result(out, "exact_match", "flexible-extract"))["value"].get<double>(), 1.0 / 3, 1e-15);
  out = run_json("--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 0 --max-gen-toks 2");
  EXPECT_EQ((*find_result(out, "exact_match", "flexible-extract"))["value"].get<double>(), 0.0);
  const CommandResult table = run("--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 0 --max-gen-toks 3");
  EXPECT_NE(table.out.find("gsm8k: 3 of 3 generations reached --max-gen-toks"), std::string::npos) << table.out;
}

// Batched generation gives one document at a time's numbers: --batch-size 2 (three documents:
// the batch refills as rows finish) and 8 (more rows than documents), with two-shot prompts of
// different lengths, rows stopped by "Question:" and rows stopped by the length limit, print the
// same results and write the same harness JSON as --batch-size 1. The progress line counts
// documents per second and an ETA.
TEST_F(EvalGenerationCli, BatchSizeGivesTheNumbersOfOneDocumentAtATime) {
  const std::string task =
      "--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 2 --fewshot-file " + data("gsm8k_train.jsonl");
  const fs::path one_json = dir_ / "batch1.json", many_json = dir_ / "batchN.json";
  for (const std::string& limit : {std::string(), std::string(" --max-gen-toks 3")}) {
    const CommandResult one = run(task + limit + " --batch-size 1 --json --output-json " + one_json.string());
    ASSERT_EQ(one.status, 0) << one.err;
    for (const char* batch : {"2", "8"}) {
      const CommandResult many =
          run(task + limit + " --batch-size " + batch + " --json --output-json " + many_json.string());
      ASSERT_EQ(many.status, 0) << many.err;
      EXPECT_EQ(json::parse(many.out), json::parse(one.out)) << "--batch-size " << batch << limit;
      EXPECT_EQ(slurp(many_json), slurp(one_json)) << "--batch-size " << batch << limit;
    }
  }
  const CommandResult shown = run(task + " --batch-size 2");
  ASSERT_EQ(shown.status, 0) << shown.err;
  EXPECT_NE(shown.err.find("gsm8k: 3/3"), std::string::npos) << shown.err;
  EXPECT_NE(shown.err.find("docs/s"), std::string::npos) << shown.err;
  EXPECT_NE(shown.err.find("ETA"), std::string::npos) << shown.err;
  const CommandResult zero = run(task + " --batch-size 0");
  EXPECT_NE(zero.status, 0);
  EXPECT_NE(zero.err.find("--batch-size: value 0 is out of range (expected a value from 1 to 65536)"),
            std::string::npos)
      << zero.err;
}

// The continuations' log-likelihoods from the three numbers: " 42" follows ':' ' ' '4' (three
// hits), " 4" two hits, " ab" a hit, a miss (after ' ') and a uniform token (after 'a').
TEST_F(EvalGenerationCli, TruthfulQaMc1AndMc2MatchTheClosedForm) {
  const double ll42 = 3 * kHit, ll4 = 2 * kHit, llab = kHit + kMiss + kUniform;
  const double mass0 = (std::exp(ll42) + std::exp(ll4)) / (std::exp(ll42) + std::exp(ll4) + std::exp(llab));
  const double mass1 = std::exp(llab) / (std::exp(llab) + std::exp(ll42));
  const json mc2 = run_json("--task truthfulqa_mc2 --task-file " + data("truthfulqa_mc.jsonl"));
  ASSERT_EQ(mc2["results"].size(), 1u);
  // fp32 log-softmax over 97 logits on the CPU engine: ~1e-6 relative error in each ll.
  EXPECT_NEAR(mc2["results"][0]["value"].get<double>(), (mass0 + mass1) / 2, 1e-5);
  EXPECT_NEAR(mc2["results"][0]["stderr"].get<double>(), std::abs(mass0 - mass1) / 2, 1e-5);
  // mc1: "ab" (gold) loses to "42" in the first document, "42" (gold) wins in the second.
  const json mc1 = run_json("--task truthfulqa_mc1 --task-file " + data("truthfulqa_mc.jsonl"));
  EXPECT_EQ(mc1["results"][0]["value"].get<double>(), 0.5);
}

// With the chat template the context ends in "<|assistant|>": '>' has no successor, so the
// first continuation token is uniform and there is no target delimiter.
TEST_F(EvalGenerationCli, ChatTemplateContinuationsFollowTheGenerationPrompt) {
  const double ll42 = kUniform + kHit, ll4 = kUniform, llab = 2 * kUniform;
  const double mass0 = (std::exp(ll42) + std::exp(ll4)) / (std::exp(ll42) + std::exp(ll4) + std::exp(llab));
  const double mass1 = std::exp(llab) / (std::exp(llab) + std::exp(ll42));
  const json mc2 =
      run_json("--task truthfulqa_mc2 --task-file " + data("truthfulqa_mc.jsonl") + " --apply-chat-template");
  // fp32 log-softmax, as above.
  EXPECT_NEAR(mc2["results"][0]["value"].get<double>(), (mass0 + mass1) / 2, 1e-5);
  const CommandResult r =
      run("--task truthfulqa_mc2 --task-file " + data("truthfulqa_mc.jsonl") + " --fewshot-as-multiturn");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--fewshot-as-multiturn"), std::string::npos) << r.err;
}

TEST_F(EvalGenerationCli, BadInputIsOneClearLine) {
  // gsm8k's default 5 shots from a 3-document few-shot file.
  CommandResult r =
      run("--task gsm8k --task-file " + data("gsm8k.jsonl") + " --fewshot-file " + data("gsm8k_train.jsonl"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("5 examples need 5 few-shot documents, the pool has 3"), std::string::npos) << r.err;
  // A task file missing a field: truthfulqa lines read as gsm8k.
  r = run("--task gsm8k --task-file " + data("truthfulqa_mc.jsonl"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("truthfulqa_mc.jsonl:1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("answer"), std::string::npos) << r.err;
  r = run("--task gsm8k_cot --task-file " + data("gsm8k.jsonl") + " --fewshot-file " + data("gsm8k_train.jsonl"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--fewshot-file"), std::string::npos) << r.err;
  r = run("--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 0 --max-gen-toks 2048");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--max-gen-toks"), std::string::npos) << r.err;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Two ranks (each every other document, as the harness splits them) print exactly what one
// process prints: every score is computed by one rank and gathered by a sum with zeros.
TEST_F(EvalGenerationCli, DataParallelRanksGiveOneProcessesNumbers) {
  for (const std::string& task : {"--task gsm8k --task-file " + data("gsm8k.jsonl") + " --shots 2 --fewshot-file " +
                                      data("gsm8k_train.jsonl") + " --max-gen-toks 3",
                                  "--task truthfulqa_mc2 --task-file " + data("truthfulqa_mc.jsonl")}) {
    const CommandResult single = run(task + " --json");
    ASSERT_EQ(single.status, 0) << single.err;
    const int port = free_port();
    const std::string launch = str("OMP_NUM_THREADS=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=", port);
    auto rank = [&](int r) {
      return str(launch, " RANK=", r, " LOCAL_RANK=", r, " timeout 120 ", MINITRON_BINARY,
                 " eval --device cpu --model ", (dir_ / "model").string(), " ", task, " --json > ",
                 (dir_ / str("rank", r, ".out")).string(), " 2> ", (dir_ / str("rank", r, ".err")).string());
    };
    const std::string both = str(rank(1), " & ", rank(0), "; status=$?; wait $! || status=1; exit $status");
    const int raw = std::system(both.c_str());
    ASSERT_TRUE(WIFEXITED(raw) && WEXITSTATUS(raw) == 0) << slurp(dir_ / "rank0.err") << slurp(dir_ / "rank1.err");
    const std::string out0 = slurp(dir_ / "rank0.out");
    EXPECT_NE(out0.find("data-parallel evaluation: 2 processes"), std::string::npos) << out0;
    EXPECT_EQ(slurp(dir_ / "rank1.out"), "");  // rank 1 prints nothing
    // The JSON line follows the announcement: the same results and document count.
    const json parallel = json::parse(out0.substr(out0.find('{')));
    EXPECT_EQ(parallel["results"], json::parse(single.out)["results"]);
    EXPECT_EQ(parallel["documents"], json::parse(single.out)["documents"]);
  }
}

// The suite on generated task files big enough for the paper's shot counts, with --limit 2.
TEST_F(EvalGenerationCli, SuitePrintsThePapersTableAndTheHarnessJson) {
  const fs::path tasks = dir_ / "tasks";
  test::write_suite_task_files(tasks, MINITRON_SOURCE_DIR);

  const fs::path results = dir_ / "results.json";
  const CommandResult r =
      run(str("--suite minitron-base --task-dir ", tasks.string(), " --limit 2 --output-json ", results.string()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("| Model | Winogrande (5) | ARC Challenge (25) | MMLU (5) | HellaSwag (10) | GSM8K (5) | "
                       "TruthfulQA (0) |"),
            std::string::npos)
      << r.out;
  const json harness = json::parse(slurp(results));
  EXPECT_EQ(harness["n-shot"]["winogrande"], 5);
  EXPECT_EQ(harness["n-shot"]["arc_challenge"], 25);
  EXPECT_EQ(harness["n-shot"]["mmlu"], 5);
  EXPECT_EQ(harness["n-shot"]["hellaswag"], 10);
  EXPECT_EQ(harness["n-shot"]["gsm8k"], 5);
  EXPECT_EQ(harness["n-shot"]["truthfulqa_mc2"], 0);
  EXPECT_EQ(harness["versions"]["gsm8k"], 3.0);
  EXPECT_EQ(harness["versions"]["mmlu"], 2.0);
  EXPECT_EQ(harness["n-samples"]["gsm8k"], (json{{"original", 3}, {"effective", 2}}));
  // With "Answer:" prompts the chain writes " 42": the first gsm8k document (42) is right for
  // flexible-extract, the second (41) is not.
  EXPECT_EQ(harness["results"]["gsm8k"]["exact_match,flexible-extract"], 0.5);
  EXPECT_EQ(harness["results"]["gsm8k"]["exact_match,strict-match"], 0.0);
  for (const char* key : {"acc,none", "acc_stderr,none"}) {
    EXPECT_TRUE(harness["results"]["winogrande"].contains(key)) << key;
    EXPECT_TRUE(harness["results"]["truthfulqa_mc2"].contains(key)) << key;
  }
  EXPECT_TRUE(harness["results"]["hellaswag"].contains("acc_norm,none"));
  EXPECT_TRUE(harness["results"].contains("mmlu_math"));
  // The table's GSM8K cell is the strict-match value in percent.
  EXPECT_NE(r.out.find("| 0.0 | "), std::string::npos) << r.out;

  fs::remove(tasks / "hellaswag_train.jsonl");
  const CommandResult missing = run(str("--suite minitron-base --task-dir ", tasks.string()));
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("hellaswag_train.jsonl does not exist"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace minitron
