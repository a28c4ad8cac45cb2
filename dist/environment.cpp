#include "dist/environment.h"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "util/error.h"
#include "util/numbers.h"

namespace minitron {

std::optional<std::string> process_environment(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

namespace {

// Far more ranks than any cluster runs; only there to keep the arithmetic far from overflow.
constexpr std::int64_t kMaxWorldSize = std::int64_t{1} << 24;

// The variables one launcher sets for each process it starts.
struct Launcher {
  const char* name;
  const char* world_size;
  const char* rank;
  const char* local_rank;
};
constexpr Launcher kTorchrun{"torchrun", "WORLD_SIZE", "RANK", "LOCAL_RANK"};
// srun sets SLURM_STEP_NUM_TASKS in the processes of a job step only. SLURM_NTASKS and
// SLURM_PROCID are in the batch script's own environment too, where one process runs.
constexpr Launcher kSrun{"srun", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID"};

// torchrun's when any of its variables is set (torchrun started by srun, one agent per node: its
// per-process names are the truth), else srun's when it started this process, else none.
const Launcher* launcher_of(const EnvironmentLookup& lookup) {
  for (const char* name : {kTorchrun.world_size, kTorchrun.rank, kTorchrun.local_rank})
    if (lookup(name)) return &kTorchrun;
  if (lookup(kSrun.world_size)) return &kSrun;
  return nullptr;
}

}  // namespace

std::int64_t launched_world_size(const EnvironmentLookup& lookup) {
  const Launcher* launcher = launcher_of(lookup);
  if (!launcher) return 1;
  const std::optional<std::string> world = lookup(launcher->world_size);
  return world ? parse_integer(launcher->world_size, *world, 1, kMaxWorldSize) : 1;
}

DistributedEnvironment distributed_environment(const EnvironmentLookup& lookup) {
  DistributedEnvironment env;
  const Launcher* launcher = launcher_of(lookup);
  if (launcher) {
    const std::optional<std::string> world = lookup(launcher->world_size);
    const std::optional<std::string> rank = lookup(launcher->rank);
    const std::optional<std::string> local_rank = lookup(launcher->local_rank);
    if (world) env.world_size = parse_integer(launcher->world_size, *world, 1, kMaxWorldSize);
    if (rank) {
      if (!world)
        fail_expected(str(launcher->rank, "=", *rank), str("set without ", launcher->world_size),
                      str(launcher->world_size, " beside it, as ", launcher->name, " sets both"));
      env.rank = parse_integer(launcher->rank, *rank, 0, kMaxWorldSize);
      if (env.rank >= env.world_size)
        fail_expected(str(launcher->rank, "=", *rank), str("not below ", launcher->world_size, "=", *world),
                      str("a rank from 0 to ", env.world_size - 1));
    } else if (env.world_size > 1) {
      fail_expected(str(launcher->world_size, "=", *world), str("set without ", launcher->rank),
                    str(launcher->rank, " beside it, as ", launcher->name, " sets both"));
    }
    if (local_rank) env.local_rank = parse_integer(launcher->local_rank, *local_rank, 0, kMaxWorldSize);
  }

  if (const std::optional<std::string> timeout = lookup("MINITRON_DISTRIBUTED_TIMEOUT")) {
    char* end = nullptr;
    const double seconds = std::strtod(timeout->c_str(), &end);
    if (timeout->empty() || end != timeout->c_str() + timeout->size() || !std::isfinite(seconds) || !(seconds > 0))
      fail_expected(str("MINITRON_DISTRIBUTED_TIMEOUT=", *timeout), "not a positive number of seconds",
                    "e.g. 300 (how long ranks wait for each other to join)");
    env.timeout_seconds = seconds;
  }
  if (env.world_size == 1) return env;

  // Several ranks meet at rank 0's address: torchrun sets it; under Slurm the batch script does.
  const char* how =
      "torchrun sets it; under Slurm export it in the batch script, e.g. "
      "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) and MASTER_PORT=29500";
  const std::string several =
      str("not set, but ", launcher->world_size, "=", env.world_size, " asks for several processes");
  const std::optional<std::string> address = lookup("MASTER_ADDR");
  if (!address || address->empty())
    fail_expected("MASTER_ADDR", several, str("the host name or address of rank 0; ", how));
  const std::optional<std::string> port = lookup("MASTER_PORT");
  if (!port || port->empty()) fail_expected("MASTER_PORT", several, str("a free TCP port on rank 0's host; ", how));
  env.master_address = *address;
  env.master_port = static_cast<int>(parse_integer("MASTER_PORT", *port, 1, 65535));
  // Under torchrun, MASTER_PORT is the port of the agent's own store (TORCHELASTIC_RUN_ID marks
  // its workers): rank 0 listens on the next one.
  if (lookup("TORCHELASTIC_RUN_ID")) {
    if (env.master_port == 65535)
      fail_expected("MASTER_PORT=65535", "torchrun's agent holds it and rank 0 listens on the next port",
                    "a MASTER_PORT below 65535");
    env.master_port += 1;
    env.master_port_name = "MASTER_PORT+1";
  }
  return env;
}

}  // namespace minitron
