// Where this process sits in a data-parallel run, read from the environment that the usual
// launchers set: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Slurm's
// srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID; MASTER_ADDR and MASTER_PORT exported
// by the batch script, as for torchrun under Slurm). None set means a single process; so does a
// batch script's own environment, which has SLURM_NTASKS and SLURM_PROCID but is no job step.
// Rank 0 listens on MASTER_PORT, or on MASTER_PORT + 1 under torchrun, whose agent already
// serves its own store on MASTER_PORT.
// MINITRON_DISTRIBUTED_TIMEOUT (seconds, default 300) bounds how long ranks wait for each other
// to join: a rank that never starts is an error after that long, not a hang.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace minitron {

struct DistributedEnvironment {
  std::int64_t rank = 0;
  std::int64_t world_size = 1;
  std::int64_t local_rank = 0;                   // this process's GPU on its node
  std::string master_address;                    // rank 0's host; empty when world_size == 1
  int master_port = 0;                           // the port rank 0 listens on
  std::string master_port_name = "MASTER_PORT";  // how messages name it ("MASTER_PORT+1" under torchrun)
  double timeout_seconds = 300;                  // how long ranks wait for each other to join
};

// Looks a variable up; nullopt when unset. Tests pass a map; the CLI passes std::getenv.
using EnvironmentLookup = std::function<std::optional<std::string>(const std::string& name)>;
std::optional<std::string> process_environment(const std::string& name);

// The number of processes the launcher started: WORLD_SIZE, else SLURM_STEP_NUM_TASKS, else 1. Commands
// that run as one process refuse more (cli/main.cpp) rather than write the same files N times.
std::int64_t launched_world_size(const EnvironmentLookup& lookup = process_environment);

// Reads the variables above (torchrun's when any of its own is set, else srun's) and checks
// them: 0 <= rank < world_size, local_rank >= 0, and for world_size > 1 a master address and a
// port in 1..65535, and a timeout > 0. Errors name the variable, its value and what was expected.
DistributedEnvironment distributed_environment(const EnvironmentLookup& lookup = process_environment);

}  // namespace minitron
