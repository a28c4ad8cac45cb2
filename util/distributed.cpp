#include "util/distributed.h"

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

// The value of the first of `names` that is set, with the name it came from.
struct Found {
  std::string name, value;
};
std::optional<Found> first_set(const EnvironmentLookup& lookup, std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (std::optional<std::string> value = lookup(name)) return Found{name, *value};
  return std::nullopt;
}

// Far more ranks than any cluster runs; only there to keep the arithmetic far from overflow.
constexpr std::int64_t kMaxWorldSize = std::int64_t{1} << 24;

// WORLD_SIZE, else SLURM_NTASKS.
std::optional<Found> world_size_variable(const EnvironmentLookup& lookup) {
  return first_set(lookup, {"WORLD_SIZE", "SLURM_NTASKS"});
}

}  // namespace

std::int64_t launched_world_size(const EnvironmentLookup& lookup) {
  const std::optional<Found> world = world_size_variable(lookup);
  return world ? parse_integer(world->name, world->value, 1, kMaxWorldSize) : 1;
}

DistributedEnvironment distributed_environment(const EnvironmentLookup& lookup) {
  DistributedEnvironment env;
  const std::optional<Found> world = world_size_variable(lookup);
  const std::optional<Found> rank = first_set(lookup, {"RANK", "SLURM_PROCID"});
  const std::optional<Found> local_rank = first_set(lookup, {"LOCAL_RANK", "SLURM_LOCALID"});
  if (world) env.world_size = parse_integer(world->name, world->value, 1, kMaxWorldSize);
  if (rank) {
    if (!world)
      fail_expected(str(rank->name, "=", rank->value), "set without WORLD_SIZE",
                    "WORLD_SIZE (or SLURM_NTASKS) beside it, as torchrun and srun set both");
    env.rank = parse_integer(rank->name, rank->value, 0, kMaxWorldSize);
    if (env.rank >= env.world_size)
      fail_expected(str(rank->name, "=", rank->value), str("not below ", world->name, "=", world->value),
                    str("a rank from 0 to ", env.world_size - 1));
  } else if (env.world_size > 1) {
    fail_expected(str(world->name, "=", world->value), "set without RANK",
                  "RANK (or SLURM_PROCID) beside it, as torchrun and srun set both");
  }
  if (local_rank) env.local_rank = parse_integer(local_rank->name, local_rank->value, 0, kMaxWorldSize);

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
  const char* how = "torchrun sets it; under Slurm export it in the batch script, e.g. "
                    "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) and MASTER_PORT=29500";
  const std::optional<std::string> address = lookup("MASTER_ADDR");
  if (!address || address->empty())
    fail_expected("MASTER_ADDR", str("not set, but ", world->name, "=", world->value, " asks for several processes"),
                  str("the host name or address of rank 0; ", how));
  const std::optional<std::string> port = lookup("MASTER_PORT");
  if (!port || port->empty())
    fail_expected("MASTER_PORT", str("not set, but ", world->name, "=", world->value, " asks for several processes"),
                  str("a free TCP port on rank 0's host; ", how));
  env.master_address = *address;
  env.master_port = static_cast<int>(parse_integer("MASTER_PORT", *port, 1, 65535));
  return env;
}

}  // namespace minitron
