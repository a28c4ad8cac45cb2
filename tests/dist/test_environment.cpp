// distributed_environment(): torchrun's and Slurm's variables through a map, and the errors a
// user meets when a launcher is misconfigured.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "dist/environment.h"
#include "tests/util/error_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using Variables = std::map<std::string, std::string>;

// A lookup into `variables`, which must outlive it.
EnvironmentLookup lookup_in(const Variables& variables) {
  return [&variables](const std::string& name) -> std::optional<std::string> {
    auto it = variables.find(name);
    if (it == variables.end()) return std::nullopt;
    return it->second;
  };
}

DistributedEnvironment read(const Variables& variables) { return distributed_environment(lookup_in(variables)); }

// The message of the Error that reading `variables` throws ("" when none is thrown).
std::string error_of(const Variables& variables) {
  return testing::error_of([&] { read(variables); });
}

TEST(DistributedEnvironment, NothingSetIsOneProcess) {
  const DistributedEnvironment env = read({});
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.master_address, "");
  EXPECT_EQ(env.timeout_seconds, 300);
}

TEST(DistributedEnvironment, Torchrun) {
  const DistributedEnvironment env = read(
      {{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node07"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_address, "node07");
  EXPECT_EQ(env.master_port, 29500);
}

TEST(DistributedEnvironment, Slurm) {
  const DistributedEnvironment env = read({{"SLURM_PROCID", "3"},
                                           {"SLURM_STEP_NUM_TASKS", "4"},
                                           {"SLURM_LOCALID", "3"},
                                           {"MASTER_ADDR", "10.0.0.1"},
                                           {"MASTER_PORT", "1234"}});
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 3);
  EXPECT_EQ(env.master_address, "10.0.0.1");
  EXPECT_EQ(env.master_port, 1234);
}

TEST(DistributedEnvironment, TorchrunWinsOverSlurm) {
  // torchrun started by srun, one agent per node: torchrun's per-process names are the truth.
  const DistributedEnvironment env = read({{"RANK", "6"},
                                           {"WORLD_SIZE", "16"},
                                           {"LOCAL_RANK", "6"},
                                           {"SLURM_PROCID", "0"},
                                           {"SLURM_STEP_NUM_TASKS", "2"},
                                           {"SLURM_LOCALID", "0"},
                                           {"MASTER_ADDR", "a"},
                                           {"MASTER_PORT", "1"}});
  EXPECT_EQ(env.rank, 6);
  EXPECT_EQ(env.world_size, 16);
  EXPECT_EQ(env.local_rank, 6);
}

TEST(DistributedEnvironment, SlurmBatchScriptIsOneProcess) {
  // sbatch's script runs once, on the first node, with the allocation's task count and rank 0
  // in its environment; only srun's job steps (SLURM_STEP_NUM_TASKS) are launches of several.
  const DistributedEnvironment env = read({{"SLURM_NTASKS", "32"}, {"SLURM_PROCID", "0"}, {"SLURM_LOCALID", "0"}});
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.rank, 0);
}

TEST(DistributedEnvironment, TorchrunsAgentHoldsMasterPort) {
  const DistributedEnvironment env = read({{"RANK", "1"},
                                           {"WORLD_SIZE", "2"},
                                           {"MASTER_ADDR", "a"},
                                           {"MASTER_PORT", "29500"},
                                           {"TORCHELASTIC_RUN_ID", "none"}});
  EXPECT_EQ(env.master_port, 29501);
  EXPECT_EQ(env.master_port_name, "MASTER_PORT+1");
  EXPECT_EQ(read({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "29500"}}).master_port,
            29500);
  EXPECT_EQ(error_of({{"RANK", "1"},
                      {"WORLD_SIZE", "2"},
                      {"MASTER_ADDR", "a"},
                      {"MASTER_PORT", "65535"},
                      {"TORCHELASTIC_RUN_ID", "x"}}),
            "MASTER_PORT=65535: torchrun's agent holds it and rank 0 listens on the next port (expected a MASTER_PORT "
            "below 65535)");
}

TEST(DistributedEnvironment, OneRankNeedsNoMaster) {
  const DistributedEnvironment env = read({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.master_address, "");
}

TEST(DistributedEnvironment, Timeout) {
  EXPECT_EQ(read({{"MINITRON_DISTRIBUTED_TIMEOUT", "2.5"}}).timeout_seconds, 2.5);
  EXPECT_EQ(error_of({{"MINITRON_DISTRIBUTED_TIMEOUT", "0"}}),
            "MINITRON_DISTRIBUTED_TIMEOUT=0: not a positive number of seconds "
            "(expected e.g. 300 (how long ranks wait for each other to join))");
  EXPECT_NE(error_of({{"MINITRON_DISTRIBUTED_TIMEOUT", "5s"}}), "");
  EXPECT_NE(error_of({{"MINITRON_DISTRIBUTED_TIMEOUT", "nan"}}), "");
}

TEST(DistributedEnvironment, NotAnInteger) {
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "abc"}}),
            "WORLD_SIZE: 'abc' is not a whole number (expected an integer from 1 to 16777216)");
  EXPECT_EQ(
      error_of({{"SLURM_PROCID", "x1"}, {"SLURM_STEP_NUM_TASKS", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}),
      "SLURM_PROCID: 'x1' is not a whole number (expected an integer from 0 to 16777216)");
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}}),
            "WORLD_SIZE: value 0 is out of range (expected an integer from 1 to 16777216)");
  EXPECT_EQ(error_of({{"LOCAL_RANK", "-1"}}),
            "LOCAL_RANK: value -1 is out of range (expected an integer from 0 to 16777216)");
}

TEST(DistributedEnvironment, RankOutOfRange) {
  EXPECT_EQ(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}),
            "RANK=2: not below WORLD_SIZE=2 (expected a rank from 0 to 1)");
}

TEST(DistributedEnvironment, HalfALauncher) {
  EXPECT_EQ(error_of({{"RANK", "1"}}),
            "RANK=1: set without WORLD_SIZE (expected WORLD_SIZE beside it, as torchrun sets both)");
  EXPECT_EQ(error_of({{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}),
            "WORLD_SIZE=2: set without RANK (expected RANK beside it, as torchrun sets both)");
  EXPECT_EQ(error_of({{"SLURM_STEP_NUM_TASKS", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}),
            "SLURM_STEP_NUM_TASKS=2: set without SLURM_PROCID (expected SLURM_PROCID beside it, as srun sets both)");
}

TEST(DistributedEnvironment, SeveralRanksNeedTheMaster) {
  const std::string no_address = error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(no_address.rfind("MASTER_ADDR: not set, but WORLD_SIZE=2 asks for several processes (expected the host "
                             "name or address of rank 0; torchrun sets it; under Slurm export it in the batch script, "
                             "e.g. MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
                             0),
            0u)
      << no_address;
  const std::string no_port = error_of({{"SLURM_PROCID", "1"}, {"SLURM_STEP_NUM_TASKS", "2"}, {"MASTER_ADDR", "n1"}});
  EXPECT_EQ(
      no_port.rfind("MASTER_PORT: not set, but SLURM_STEP_NUM_TASKS=2 asks for several processes (expected a free TCP "
                    "port on rank 0's host;",
                    0),
      0u)
      << no_port;
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "70000"}}),
            "MASTER_PORT: value 70000 is out of range (expected an integer from 1 to 65535)");
}

TEST(DistributedEnvironment, LaunchedWorldSize) {
  const auto count = [](const Variables& variables) { return launched_world_size(lookup_in(variables)); };
  EXPECT_EQ(count({}), 1);
  EXPECT_EQ(count({{"WORLD_SIZE", "8"}}), 8);  // no RANK or MASTER_ADDR needed to count
  EXPECT_EQ(count({{"SLURM_STEP_NUM_TASKS", "4"}}), 4);
  EXPECT_EQ(count({{"WORLD_SIZE", "2"}, {"SLURM_STEP_NUM_TASKS", "4"}}), 2);
  EXPECT_EQ(count({{"SLURM_NTASKS", "32"}, {"SLURM_PROCID", "0"}}), 1);  // a batch script, not a step
  EXPECT_THROW(count({{"WORLD_SIZE", "two"}}), Error);
}

}  // namespace
}  // namespace minitron
