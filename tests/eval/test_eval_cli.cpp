// End to end through the built binary on the llama3_gqa fixture with the tiny tokenizer:
// `minitron eval --task ... --json` reproduces the reference metrics of
// tests/eval/data/expected_scores.json, `minitron generate` runs, bad flags fail clearly.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

std::string source(const std::string& rel) { return (fs::path(MINITRON_SOURCE_DIR) / rel).string(); }

struct CommandResult {
  int status;
  std::string out, err;
};

CommandResult minitron(const std::string& args) {
  const fs::path dir = fs::temp_directory_path() / ("minitron_eval_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string command =
      str(MINITRON_BINARY, " ", args, " > ", (dir / "out.txt").string(), " 2> ", (dir / "err.txt").string());
  const int raw = std::system(command.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  CommandResult r{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(dir / "out.txt"), slurp(dir / "err.txt")};
  fs::remove_all(dir);
  return r;
}

const std::string kModel = " --model " + source("tests/fixtures/llama3_gqa") + " --tokenizer " +
                           source("tests/eval/data/tokenizer.json") + " --device cpu";

TEST(EvalCli, MmluJsonMatchesTheReference) {
  const CommandResult r =
      minitron("eval" + kModel + " --task mmlu --task-file " + source("tests/eval/data/mmlu_test.jsonl") +
               " --fewshot-file " + source("tests/eval/data/mmlu_dev.jsonl") + " --shots 1 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  const nlohmann::json got = nlohmann::json::parse(r.out);
  std::ifstream in(source("tests/eval/data/expected_scores.json"));
  const nlohmann::json expected = nlohmann::json::parse(in);
  const nlohmann::json* run = nullptr;
  for (const auto& x : expected["runs"])
    if (x["name"] == "mmlu_1shot") run = &x;
  ASSERT_NE(run, nullptr);
  ASSERT_EQ(got["results"].size(), (*run)["metrics"].size());
  for (std::size_t i = 0; i < got["results"].size(); ++i) {
    EXPECT_EQ(got["results"][i]["task"], (*run)["metrics"][i]["task"]);
    EXPECT_NEAR(got["results"][i]["value"].get<double>(), (*run)["metrics"][i]["value"].get<double>(),
                1e-12);  // 0/1 means
  }
}

TEST(EvalCli, TableAndLimit) {
  const CommandResult r = minitron("eval" + kModel + " --task hellaswag --task-file " +
                                   source("tests/eval/data/hellaswag.jsonl") + " --limit 2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("hellaswag"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("acc_norm"), std::string::npos) << r.out;
}

TEST(EvalCli, BadTaskFailsWithAClearMessage) {
  CommandResult r = minitron("eval" + kModel + " --task piqa --task-file x.jsonl");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--task"), std::string::npos) << r.err;
  r = minitron("eval" + kModel + " --task winogrande --task-file " + source("tests/eval/data/hellaswag.jsonl"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("hellaswag.jsonl:1"), std::string::npos) << r.err;
}

TEST(GenerateCli, RunsAndStreamsThePrompt) {
  const CommandResult r =
      minitron("generate" + kModel + " --prompt 'The cat' --max-new-tokens 5 --temperature 0.8 --seed 3");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("The cat", 0), 0u) << r.out;
  const CommandResult again =
      minitron("generate" + kModel + " --prompt 'The cat' --max-new-tokens 5 --temperature 0.8 --seed 3");
  EXPECT_EQ(again.out, r.out);  // seeded
}

// --prompts-file generates its prompts two at a time (the batch refills; rows end at the length
// limit or an EOS id on their own); each JSON line's completion is what `--prompt` alone
// prints after its prompt, in file order.
TEST(GenerateCli, PromptsFileGivesEachPromptsAloneContinuation) {
  const std::vector<std::string> prompts = {"The cat", "A dog ran far away", "x", "She said"};
  const fs::path file = fs::temp_directory_path() / ("minitron_prompts_" + std::to_string(::getpid()) + ".jsonl");
  {
    std::ofstream out(file);
    for (const std::string& p : prompts) out << nlohmann::json{{"prompt", p}}.dump() << "\n\n";  // blank lines skipped
  }
  const CommandResult many =
      minitron("generate" + kModel + " --prompts-file " + file.string() + " --batch-size 2 --max-new-tokens 6");
  ASSERT_EQ(many.status, 0) << many.err;
  std::istringstream lines(many.out);
  std::string line;
  std::size_t i = 0;
  for (; std::getline(lines, line); ++i) {
    ASSERT_LT(i, prompts.size()) << many.out;
    const nlohmann::json got = nlohmann::json::parse(line);
    EXPECT_EQ(got["prompt"], prompts[i]);
    const CommandResult alone = minitron("generate" + kModel + " --prompt '" + prompts[i] + "' --max-new-tokens 6");
    ASSERT_EQ(alone.status, 0) << alone.err;
    EXPECT_EQ(prompts[i] + got["completion"].get<std::string>() + "\n", alone.out) << "prompt " << i;
    EXPECT_TRUE(got["finish_reason"] == "stop" || got["finish_reason"] == "length") << line;
  }
  EXPECT_EQ(i, prompts.size());

  std::ofstream(file) << "{\"text\": \"no prompt\"}\n";
  CommandResult bad = minitron("generate" + kModel + " --prompts-file " + file.string());
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("line 1: prompt"), std::string::npos) << bad.err;
  fs::remove(file);
  bad = minitron("generate" + kModel + " --prompt 'The cat' --batch-size 2");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("--batch-size: given without --prompts-file (expected --prompts-file)"), std::string::npos)
      << bad.err;
}

// generation_config.json's eos_token_id stops a plain generation, as transformers' generate
// does: listing every id there stops each prompt after its first token, where the fixture alone
// runs to the length limit.
TEST(GenerateCli, StopsAtGenerationConfigEos) {
  const fs::path model = fs::temp_directory_path() / ("minitron_genconfig_" + std::to_string(::getpid()));
  fs::create_directories(model);
  for (const char* name : {"config.json", "model.safetensors"})
    fs::copy_file(source("tests/fixtures/llama3_gqa") + "/" + name, model / name, fs::copy_options::overwrite_existing);
  const std::string args = " --model " + model.string() + " --tokenizer " + source("tests/eval/data/tokenizer.json") +
                           " --device cpu --prompt 'The cat' --max-new-tokens 4";
  const CommandResult free_run = minitron("generate" + args + " --ignore-eos");
  ASSERT_EQ(free_run.status, 0) << free_run.err;
  const CommandResult plain = minitron("generate" + args);
  ASSERT_EQ(plain.status, 0) << plain.err;
  ASSERT_EQ(plain.out, free_run.out);  // the fixture's own EOS ids do not come up in these 4 tokens

  nlohmann::json every_id = nlohmann::json::array();
  const nlohmann::json config = nlohmann::json::parse(std::ifstream(model / "config.json"));
  for (std::int64_t id = 0; id < config["vocab_size"].get<std::int64_t>(); ++id) every_id.push_back(id);
  std::ofstream(model / "generation_config.json") << nlohmann::json{{"eos_token_id", every_id}}.dump();
  const CommandResult stopped = minitron("generate" + args);
  ASSERT_EQ(stopped.status, 0) << stopped.err;
  EXPECT_LT(stopped.out.size(), free_run.out.size()) << stopped.out;
  EXPECT_EQ(free_run.out.rfind(stopped.out.substr(0, stopped.out.size() - 1), 0), 0u)  // its first token
      << stopped.out << " vs " << free_run.out;
  EXPECT_EQ(minitron("generate" + args + " --ignore-eos").out, free_run.out);  // the flag still overrides

  std::ofstream(model / "generation_config.json") << R"({"eos_token_id": "two"})";
  const CommandResult bad = minitron("generate" + args);
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("generation_config.json"), std::string::npos) << bad.err;
  fs::remove_all(model);
}

}  // namespace
}  // namespace minitron
