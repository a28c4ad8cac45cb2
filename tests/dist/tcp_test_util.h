// Ranks of a TcpGroup as threads of one test process, on 127.0.0.1.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dist/environment.h"
#include "util/error.h"

namespace minitron::testing {

// A port nobody listens on right now: the kernel picks one for a socket bound to port 0, which
// is then closed for rank 0 to bind (SO_REUSEADDR lets it, even in TIME_WAIT).
inline int free_tcp_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("socket() failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(fd);
    fail("binding a free port failed");
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

inline DistributedEnvironment local_environment(std::int64_t rank, std::int64_t world_size, int port,
                                                double timeout_seconds = 20) {
  DistributedEnvironment env;
  env.rank = rank;
  env.world_size = world_size;
  env.master_address = "127.0.0.1";
  env.master_port = port;
  env.timeout_seconds = timeout_seconds;
  return env;
}

// Runs body(rank) on one thread per rank and returns each rank's error message ("" when it
// returned normally), so a test can check which ranks failed and how.
inline std::vector<std::string> run_ranks(std::int64_t world_size, const std::function<void(std::int64_t)>& body) {
  std::vector<std::string> errors(static_cast<std::size_t>(world_size));
  std::vector<std::thread> threads;
  for (std::int64_t r = 0; r < world_size; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
        if (errors[static_cast<std::size_t>(r)].empty()) errors[static_cast<std::size_t>(r)] = "(empty error)";
      }
    });
  for (std::thread& t : threads) t.join();
  return errors;
}

}  // namespace minitron::testing
