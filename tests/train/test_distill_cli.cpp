// `minitron distill` with the intermediate-state loss, through the built binary: a bad layer
// mapping is refused with a clear error before any work, a good run trains and checkpoints the
// map beside the training state (not in the exported model), and --resume continues from it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "model/checkpoint.h"
#include "tests/prune/prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::minitron;
using testing::slurp;

class DistillCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ModelConfig teacher = testing::tiny_config(), student = testing::tiny_config();
    teacher.rms_norm_eps = student.rms_norm_eps = 1e-5;
    student.hidden_size = 16;
    student.num_hidden_layers = 2;
    SaveOptions save;
    save.dtype = SafetensorsDType::F32;
    save_checkpoint(dir_ / "teacher", teacher, ParameterTable(teacher), testing::tiny_parameters(teacher, 3), save);
    save_checkpoint(dir_ / "student", student, ParameterTable(student), testing::tiny_parameters(student, 4), save);
    write_shard(dir_ / "train.bin", testing::tiny_tokens(400, teacher.vocab_size, 5));
  }
  CommandResult distill(const std::string& extra) {
    return minitron(
        dir_, str("distill --teacher ", (dir_ / "teacher").string(), " --student ", (dir_ / "student").string(),
                  " --data ", (dir_ / "train.bin").string(), " --output ", (dir_ / "out").string(),
                  " --device cpu --batch-size 2 --sequence-length 8 --warmup-steps 0 --save-dtype float32 ", extra));
  }
  testing::TempDir dir_;
};

TEST_F(DistillCli, RefusesBadLayerMappings) {
  CommandResult r = distill("--steps 1 --intermediate-loss-weight 1 --intermediate-layers 0:1,1:9");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("teacher layer 9 in '1:9' is out of range"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("0 <= teacher layer < 4"), std::string::npos) << r.err;
  r = distill("--steps 1 --intermediate-loss-weight 1 --intermediate-layers 2:3");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("student layer 2 in '2:3' is out of range"), std::string::npos) << r.err;
  r = distill("--steps 1 --intermediate-layers 0:1");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--intermediate-loss-weight > 0"), std::string::npos) << r.err;
  r = distill("--steps 1 --intermediate-loss-weight -1");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--intermediate-loss-weight"), std::string::npos) << r.err;
}

// --temperature / --hard-label-weight are checked right after parsing: before the fix they were
// refused by the objective, after both checkpoints loaded (the "distilling" banner came first),
// and a missing checkpoint directory was reported instead of them.
TEST_F(DistillCli, RefusesBadLossFlagsBeforeLoadingCheckpoints) {
  CommandResult r = distill("--steps 1 --temperature 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--temperature: 0 (expected a finite value > 0"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("distilling"), std::string::npos) << r.out;
  r = distill("--steps 1 --hard-label-weight 1.5");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--hard-label-weight: 1.5 (expected a value in [0, 1]"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("distilling"), std::string::npos) << r.out;
  r = minitron(
      dir_, str("distill --teacher ", (dir_ / "no-such-teacher").string(), " --student ", (dir_ / "student").string(),
                " --data ", (dir_ / "train.bin").string(), " --output ", (dir_ / "out").string(), " --temperature=-1"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--temperature: -1"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(DistillCli, TrainsCheckpointsAndResumesTheMap) {
  CommandResult r = distill("--steps 2 --save-interval 1 --intermediate-loss-weight 0.5");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("layers (student:teacher) 0:1,1:3, learned map 16 -> 32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kl+hidden"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir_ / "out" / "checkpoint-1" / "hidden_state_map.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "out" / "model" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ / "out" / "model" / "hidden_state_map.safetensors"));  // not part of the model
  EXPECT_NE(slurp(dir_ / "out" / "metrics.jsonl").find("\"intermediate_layers\":\"0:1,1:3\""), std::string::npos);
  r = distill("--steps 3 --save-interval 1 --intermediate-loss-weight 0.5 --resume");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("resuming from"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace minitron
