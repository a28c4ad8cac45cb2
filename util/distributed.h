// Where this process sits in a data-parallel run, read from the environment that the usual
// launchers set: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Slurm's
// srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR and MASTER_PORT exported by the
// batch script, as for torchrun under Slurm). No variable set means a single process.
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
  std::int64_t local_rank = 0;     // this process's GPU on its node
  std::string master_address;      // rank 0's host; empty when world_size == 1
  int master_port = 0;
  double timeout_seconds = 300;    // how long ranks wait for each other to join
};

// Looks a variable up; nullopt when unset. Tests pass a map; the CLI passes std::getenv.
using EnvironmentLookup = std::function<std::optional<std::string>(const std::string& name)>;
std::optional<std::string> process_environment(const std::string& name);

// The number of processes the launcher started: WORLD_SIZE, else SLURM_NTASKS, else 1. Commands
// that run as one process refuse more (cli/main.cpp) rather than write the same files N times.
std::int64_t launched_world_size(const EnvironmentLookup& lookup = process_environment);

// Reads the variables above (torchrun's names win over Slurm's, variable by variable) and checks
// them: 0 <= rank < world_size, local_rank >= 0, and for world_size > 1 a master address and a
// port in 1..65535, and a timeout > 0. Errors name the variable, its value and what was expected.
DistributedEnvironment distributed_environment(const EnvironmentLookup& lookup = process_environment);

}  // namespace minitron
