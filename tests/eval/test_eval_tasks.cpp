// Task parsing and the harness's request strings, against expectations written by hand from
// the lm-evaluation-harness sources cited in eval/tasks.h (file by file below).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "eval/tasks.h"
#include "util/error.h"

namespace minitron {
namespace {

std::filesystem::path data(const std::string& name) {
  return std::filesystem::path(MINITRON_SOURCE_DIR) / "tests/eval/data" / name;
}

// lm_eval/tasks/hellaswag/utils.py `preprocess`.
TEST(HellaswagPreprocess, MatchesThePythonSteps) {
  EXPECT_EQ(hellaswag_preprocess("  a [b] c "), "a c");                            // strip, drop "[b]", "  " -> " "
  EXPECT_EQ(hellaswag_preprocess("Tea [title] Boil water."), "Tea. Boil water.");  // "Tea.  Boil" -> one space
  EXPECT_EQ(hellaswag_preprocess("x [unclosed"), "x [unclosed");                   // no "]": the regex does not match
  EXPECT_EQ(hellaswag_preprocess("a [b\n] c"), "a [b\n] c");                       // '.' does not match a newline
  EXPECT_EQ(hellaswag_preprocess("three   spaces"), "three  spaces");  // str.replace: one pass, non-overlapping
  EXPECT_EQ(hellaswag_preprocess("[title] Go on."), " Go on.");        // stripped before: the space survives
  EXPECT_EQ(python_capitalize("THE ROOTS should"), "The roots should");
  EXPECT_EQ(python_capitalize(""), "");
}

TEST(TaskFiles, HellaswagQueryAndEndings) {
  const auto docs = load_task_file(TaskKind::HellaSwag, data("hellaswag.jsonl"));
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].query, "Making tea: A woman fills a kettle with water and puts it on the stove. She");
  EXPECT_EQ(docs[0].gold, 0);
  EXPECT_EQ(
      docs[1].query,
      "Home and Garden: How to plant a tree. Dig a hole. Make the hole twice as wide as the roots. The roots should");
  EXPECT_EQ(docs[1].choices,
            (std::vector<std::string>{"fit without bending. Water the soil well.", "be painted red before planting.",
                                      " Go to the shop and buy a cake.", "sing to the tree every night."}));
  EXPECT_EQ(docs[2].query, "Riding a bike: A boy gets on his bike and rides down the hill.");  // empty ctx_b: stripped
  const Question q = build_question(TaskKind::HellaSwag, docs[0], "");
  ASSERT_EQ(q.requests.size(), 4u);
  EXPECT_EQ(q.requests[1].context, docs[0].query);
  EXPECT_EQ(q.requests[1].continuation, " throws the kettle out of the window.");
  EXPECT_EQ(q.choice_lengths[1], 36);  // len("throws the kettle out of the window."): the delimiter is not counted
}

// lm_eval/tasks/winogrande/preprocess_winogrande.py: doc_to_text / doc_to_target.
TEST(TaskFiles, WinograndePartialScoring) {
  const auto docs = load_task_file(TaskKind::Winogrande, data("winogrande.jsonl"));
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[2].gold, 1);  // answer "2"
  const Question q = build_question(TaskKind::Winogrande, docs[2], "");
  ASSERT_EQ(q.requests.size(), 2u);
  EXPECT_EQ(q.requests[0].context, "The dog chased the cat, so the dog");
  EXPECT_EQ(q.requests[1].context, "The dog chased the cat, so the cat");
  EXPECT_EQ(q.requests[0].continuation, " ran up the tree.");
  EXPECT_EQ(q.requests[1].continuation, " ran up the tree.");
  // As a few-shot example: the gold option's context, the delimiter, the target.
  EXPECT_EQ(fewshot_example(TaskKind::Winogrande, docs[0]),
            "The cup did not fit in the bag because the cup was too big.");
}

// lm_eval/tasks/mmlu/default/_default_template_yaml and mmlu_<subject>.yaml's description.
TEST(TaskFiles, MmluPromptWithDevShots) {
  const auto test = load_task_file(TaskKind::Mmlu, data("mmlu_test.jsonl"));
  const auto dev = load_task_file(TaskKind::Mmlu, data("mmlu_dev.jsonl"));
  ASSERT_EQ(test.size(), 3u);
  EXPECT_EQ(test[2].gold, 2);  // "answer": "C"
  const auto shots = FewshotSampler(TaskKind::Mmlu, dev, /*pool_is_eval_docs=*/false, 1).next(test[1]);
  ASSERT_EQ(shots.size(), 1u);
  const Question q = build_question(TaskKind::Mmlu, test[1], fewshot_prefix(TaskKind::Mmlu, test[1].subject, shots));
  ASSERT_EQ(q.requests.size(), 4u);
  EXPECT_EQ(q.requests[0].context,
            "The following are multiple choice questions (with answers) about high school biology.\n\n"
            "What is the basic unit of life?\nA. the atom\nB. the cell\nC. the rock\nD. the star\nAnswer: B\n\n"
            "Which organ pumps blood?\nA. the lung\nB. the heart\nC. the skin\nD. the bone\nAnswer:");
  EXPECT_EQ(q.requests[3].continuation, " D");
  // Geography draws from its own subject's dev documents only.
  const auto geo = FewshotSampler(TaskKind::Mmlu, dev, false, 2).next(test[2]);
  ASSERT_EQ(geo.size(), 2u);
  EXPECT_EQ(geo[0]->query.substr(0, 21), "Which is a continent?");
  EXPECT_EQ(geo[1]->query.substr(0, 17), "Which is an ocean");
}

// lm_eval/tasks/arc/arc_easy.yaml; few-shot as lm_eval/api/samplers.py joins examples.
TEST(TaskFiles, ArcPromptAndDefaultFewshot) {
  const auto docs = load_task_file(TaskKind::ArcEasy, data("arc_easy.jsonl"));
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[2].gold, 2);  // lower-case labels, answerKey "c"
  // Which documents the harness draws is tested in test_python_random; here the prompt's shape.
  const std::vector<const TaskDoc*> shots{&docs[0], &docs[2]};
  const Question q = build_question(TaskKind::ArcEasy, docs[1], fewshot_prefix(TaskKind::ArcEasy, "", shots));
  ASSERT_EQ(q.requests.size(), 3u);
  EXPECT_EQ(
      q.requests[0].context,
      "Question: Which of these is a liquid?\nAnswer: water\n\nQuestion: Which animal can fly?\nAnswer: a bird\n\n"
      "Question: What makes a shadow?\nAnswer:");
  EXPECT_EQ(q.requests[0].continuation, " light blocked by an object");
  EXPECT_EQ(q.choice_lengths, (std::vector<std::int64_t>{26, 5, 4}));
}

TEST(TaskFiles, GenericMultipleChoice) {
  const auto docs = load_task_file(TaskKind::MultipleChoice, data("multiple_choice.jsonl"));
  ASSERT_EQ(docs.size(), 3u);
  const Question q = build_question(TaskKind::MultipleChoice, docs[0], "");
  EXPECT_EQ(q.requests[1].context, "The sky is ");  // trailing space moves only when encoding
  EXPECT_EQ(q.requests[1].continuation, " green and made of cheese");
}

TEST(TaskFiles, Utf8LengthCountsCodePoints) {
  EXPECT_EQ(utf8_length("abc"), 3);
  EXPECT_EQ(utf8_length("caf\xC3\xA9"), 4);  // Python len("café") == 4
}

TEST(TaskFiles, BadInputIsAClearError) {
  EXPECT_THROW(parse_task_kind("piqa"), Error);
  EXPECT_THROW(parse_task_doc(TaskKind::Winogrande,
                              R"({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"})", "x:1"),
               Error);
  EXPECT_THROW(parse_task_doc(TaskKind::MultipleChoice, R"({"context": "c", "choices": ["a"], "label": 3})", "x:1"),
               Error);
  EXPECT_THROW(
      parse_task_doc(TaskKind::ArcEasy,
                     R"({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"})", "x:1"),
      Error);
  EXPECT_THROW(parse_task_doc(TaskKind::HellaSwag, "{not json", "x:1"), Error);
  try {
    parse_task_doc(TaskKind::Mmlu, R"({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 0})", "f.jsonl:7");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f.jsonl:7"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("subject"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace minitron
