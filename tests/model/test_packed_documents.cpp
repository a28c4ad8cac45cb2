// Packed documents through the whole model on the CPU engines (ForwardOptions::positions; the
// harness is tests/model/packed_model_test_util.h, which the emulated CUDA engine runs too in
// tests/kernels/cuda/test_cuda_training_step.cpp). Also the positions a forward takes
// (model/document_positions.h): those derived from EOS tokens, and the refusals of tables that
// are not whole documents.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/make_backend.h"
#include "model/document_positions.h"
#include "model/llama.h"
#include "tests/model/packed_model_test_util.h"
#include "tests/model/recompute_test_util.h"
#include "tests/util/error_test_util.h"
#include "util/random.h"

namespace minitron::test {
namespace {

struct EngineTolerance {
  const char* engine;
  double logits, gradients;  // relative to the largest magnitude
};

// cpu-f64: the same double sums in another order (other GEMM sizes): ~1e-16 per operation over
// a few hundred terms. cpu: fp32 reassociation over the same sums, ~2^-24 x a few hundred.
const EngineTolerance kEngines[] = {{"cpu-f64", 1e-12, 1e-12}, {"cpu", 1e-5, 1e-4}};

TEST(PackedDocumentsModel, LogitsAndGradientsMatchEachDocumentAlone) {
  for (const EngineTolerance& e : kEngines) {
    SCOPED_TRACE(e.engine);
    auto backend = make_backend(e.engine);
    expect_packed_model_matches_documents_alone(*backend, e.logits, e.gradients);
  }
}

// Recomputation rebuilds each layer with the forward's positions: gradients bit-identical to
// keeping every activation, as without packing (tests/model/recompute_test_util.h).
TEST(PackedDocumentsModel, RecomputationKeepsGradientsBitIdentical) {
  for (const char* engine : {"cpu", "cpu-f64"}) {
    SCOPED_TRACE(engine);
    auto backend = make_backend(engine);
    expect_recompute_bit_identical(*backend, packed_test_config(), /*packed=*/true);
  }
}

TEST(DocumentPositions, RestartAfterEachEosAndAtEachRow) {
  const std::vector<std::int64_t> eos = {9, 8};  // any of the config's EOS ids ends a document
  const std::vector<std::int32_t> tokens = {4, 9, 5, 6, 9, 9, 7, /* row 2 */ 9, 1, 8, 9, 3, 3, 3};
  std::vector<std::int32_t> positions(tokens.size());
  document_positions_from_tokens(DocumentBoundaries::Eos, eos, tokens, 7, positions);
  // An EOS ends its document (its own position continues); the next token starts at 0; a row
  // always starts at 0, EOS or not; two EOS in a row make a 1-token document of the second.
  const std::vector<std::int32_t> expected = {0, 1, 0, 1, 2, 0, 0, /* row 2 */ 0, 0, 1, 0, 0, 1, 2};
  EXPECT_EQ(positions, expected);
  check_document_positions(positions, 2, 7);  // what it derives is always accepted
}

TEST(DocumentPositions, RestartAtEachBosAndAtEachRow) {
  const std::vector<std::int64_t> bos = {7};
  const std::vector<std::int32_t> tokens = {4, 7, 5, 6, 7, 7, 2, /* row 2 */ 7, 1, 2, 3, 7, 3, 3};
  std::vector<std::int32_t> positions(tokens.size());
  document_positions_from_tokens(DocumentBoundaries::Bos, bos, tokens, 7, positions);
  // A BOS starts its document (position 0); a row starts one whatever its first token; two BOS
  // in a row make a 1-token document of the first.
  const std::vector<std::int32_t> expected = {0, 0, 1, 2, 0, 0, 1, /* row 2 */ 0, 1, 2, 3, 0, 1, 2};
  EXPECT_EQ(positions, expected);
  check_document_positions(positions, 2, 7);
  for (DocumentBoundaries b : {DocumentBoundaries::None, DocumentBoundaries::Eos, DocumentBoundaries::Bos})
    EXPECT_EQ(parse_document_boundaries(document_boundaries_name(b)), b);
  EXPECT_FALSE(parse_document_boundaries("EOS").has_value());
}

TEST(DocumentPositions, MalformedTablesAreRefused) {
  EXPECT_EQ(minitron::testing::error_of([] {
              check_document_positions(std::vector<std::int32_t>{0, 1, 2}, 1, 4);
            }),
            "document positions: 3 positions (expected one per token (1 x 4 = 4))");
  EXPECT_EQ(minitron::testing::error_of([] {
              check_document_positions(std::vector<std::int32_t>{0, 1, 1, 0}, 2, 2);
            }),
            "document positions: position 1 at row 1, token 0 (expected 0 (each row starts a document))");
  EXPECT_EQ(minitron::testing::error_of([] {
              check_document_positions(std::vector<std::int32_t>{0, 1, 3, 0}, 1, 4);
            }),
            "document positions: position 3 at row 0, token 2 (expected 0 (a new document) or 2 (the previous position "
            "+ 1))");
  auto backend = make_backend("cpu");
  const ModelConfig config = packed_test_config();
  LlamaModel model(config, *backend, 1, 4, ModelMode::Inference);
  KvCache cache(config, *backend, 8);
  ForwardOptions options;
  const std::vector<std::int32_t> positions = {0, 1, 0, 1}, tokens = {1, 2, 3, 4};
  options.positions = positions;
  options.cache = &cache;
  EXPECT_EQ(minitron::testing::error_of([&] { model.forward(tokens, 1, 4, options); }),
            "forward: packed-document positions with a KV cache (expected one or the other)");
}

}  // namespace
}  // namespace minitron::test
