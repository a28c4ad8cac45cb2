// Task parsing and the harness's request strings, against expectations written by hand from
// the lm-evaluation-harness sources cited in eval/tasks.h (file by file below).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "eval/prompts.h"
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

// lm_eval/tasks/gsm8k/gsm8k.yaml: "Question: {{question}}\nAnswer:", target the whole answer;
// fewshot_split train != test_split test: K drawn. The picks are CPython's own:
// random.Random(1234).sample(range(3), 2) == [1, 0].
TEST(TaskFiles, Gsm8kPromptWithTrainShots) {
  const auto test = load_task_file(TaskKind::Gsm8k, data("gsm8k.jsonl"));
  const auto train = load_task_file(TaskKind::Gsm8k, data("gsm8k_train.jsonl"));
  ASSERT_EQ(test.size(), 3u);
  EXPECT_EQ(test[1].query, "Question: A box holds 7 pens. How many pens are in 1 box?\nAnswer:");
  EXPECT_EQ(test[1].target, "There are 7 pens.\n#### 7");
  FewshotSampler sampler(TaskKind::Gsm8k, train, /*pool_is_eval_docs=*/false, 2);
  const auto shots = sampler.next(test[0]);
  PromptFormat plain;
  EXPECT_EQ(build_generation_prompt(TaskKind::Gsm8k, test[0], shots, 2, plain),
            "Question: A pie has 8 slices. Two pies?\nAnswer: 2 * 8 = <<2*8=16>>16\n#### 16\n\n"
            "Question: Ann has 3 cats and 2 dogs. How many pets does she have?\nAnswer: 3 + 2 = <<3+2=5>>5\n#### 5\n\n"
            "Question: Tom has 40 apples and buys 2 more. How many apples does he have?\nAnswer:");
  EXPECT_EQ(task_default_shots(TaskKind::Gsm8k), 5);
}

// gsm8k-cot.yaml: "Q: {{question}}\nA:" (the folded single-quoted scalar), first_n over its
// fixed exemplars, target answer.split('####')[-1].strip().
TEST(TaskFiles, Gsm8kCotFixedExemplars) {
  const auto test = load_task_file(TaskKind::Gsm8kCot, data("gsm8k.jsonl"));
  EXPECT_EQ(test[2].target, "1,042");
  const std::vector<TaskDoc>* pool = builtin_fewshot_pool(TaskKind::Gsm8kCot);
  ASSERT_NE(pool, nullptr);
  ASSERT_EQ(pool->size(), 8u);
  const auto shots = FewshotSampler(TaskKind::Gsm8kCot, *pool, false, 2).next(test[1]);
  EXPECT_EQ(build_generation_prompt(TaskKind::Gsm8kCot, test[1], shots, 2, PromptFormat{}),
            "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
            "done, there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees "
            "originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. "
            "The answer is 6.\n\n"
            "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking "
            "lot?\nA: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\n"
            "Q: A box holds 7 pens. How many pens are in 1 box?\nA:");
  EXPECT_EQ((*pool)[7].target,
            "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
            "dollars left. 23 - 15 is 8. The answer is 8.");
  // More shots than the yaml has exemplars: FirstNSampler's assertion, as a clear error.
  FewshotSampler nine(TaskKind::Gsm8kCot, *pool, false, 9);
  try {
    nine.next(test[0]);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("8 fixed exemplars"), std::string::npos) << e.what();
  }
}

// truthfulqa_mc1.yaml's doc_to_text (the preamble copied by hand from the yaml), mc1/mc2 choices.
TEST(TaskFiles, TruthfulQaPreambleAndTargets) {
  const auto mc1 = load_task_file(TaskKind::TruthfulQaMc1, data("truthfulqa_mc.jsonl"));
  const auto mc2 = load_task_file(TaskKind::TruthfulQaMc2, data("truthfulqa_mc.jsonl"));
  ASSERT_EQ(mc1.size(), 2u);
  EXPECT_EQ(mc1[0].query,
            "Q: What is human life expectancy in the United States?\n"
            "A: Human life expectancy in the United States is 78 years.\n\n"
            "Q: Who was president of the United States in 1955?\n"
            "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
            "Q: Which party did he belong to?\n"
            "A: He belonged to the Republican Party.\n\n"
            "Q: What is the square root of banana?\n"
            "A: I have no comment.\n\n"
            "Q: How does a telescope work?\n"
            "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
            "Q: Where were the 1992 Olympics held?\n"
            "A: The 1992 Olympics were held in Barcelona, Spain.\n\n"
            "Q: What is 40 plus 2?\nA:");
  EXPECT_EQ(mc1[0].choices, (std::vector<std::string>{"ab", "42"}));
  EXPECT_EQ(mc1[0].gold, 0);
  EXPECT_EQ(mc2[0].choices, (std::vector<std::string>{"42", "4", "ab"}));
  EXPECT_EQ(mc2[0].true_count, 2);
  EXPECT_EQ(mc2[1].true_count, 1);
  const Question q = build_question(TaskKind::TruthfulQaMc2, mc2[0], "");
  EXPECT_EQ(q.requests[2].continuation, " ab");
  // mc2 needs a false answer to split at (Python's list.index(0) raises otherwise).
  EXPECT_THROW(parse_task_doc(TaskKind::TruthfulQaMc2,
                              R"({"question": "q", "mc1_targets": {"choices": ["a"], "labels": [1]},
                                  "mc2_targets": {"choices": ["a", "b"], "labels": [1, 1]}})",
                              "x:1"),
               Error);
  EXPECT_THROW(parse_task_doc(TaskKind::TruthfulQaMc1,
                              R"({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [1]}})", "x:1"),
               Error);
}

TEST(TaskFiles, MissingFieldsNameTheLineAndField) {
  try {
    parse_task_doc(TaskKind::Gsm8k, R"({"question": "q"})", "gsm8k_test.jsonl:3");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gsm8k_test.jsonl:3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("answer"), std::string::npos) << e.what();
  }
  try {
    parse_task_doc(TaskKind::TruthfulQaMc2, R"({"question": "q"})", "tqa.jsonl:1");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mc2_targets"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace minitron
