#include "dist/tcp_group.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "util/error.h"

namespace minitron {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint32_t kMagic = 0x4D54524E;  // "MTRN": a minitron rank, not a stray connection
constexpr std::uint32_t kVersion = 1;

// A rank introduces itself with this; rank 0 answers with the same record (its own rank 0)
// once every rank has joined.
struct Hello {
  std::uint32_t magic = kMagic;
  std::uint32_t version = kVersion;
  std::int64_t rank = 0;
  std::int64_t world_size = 0;
};

// Every collective message starts with what the sender is doing, so that ranks that call
// different collectives (a bug, or ranks that disagree on the step count) fail with an Error
// naming both instead of reading each other's bytes as numbers.
enum class Op : std::uint32_t { Broadcast = 1, SumFloat = 2, SumDouble = 3, Barrier = 4, AllGather = 5 };
struct Header {
  std::uint32_t magic = kMagic;
  std::uint32_t op = 0;
  std::uint64_t bytes = 0;
};

const char* op_name(std::uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::Broadcast: return "broadcast";
    case Op::SumFloat: return "all_reduce_sum(float)";
    case Op::SumDouble: return "all_reduce_sum(double)";
    case Op::Barrier: return "barrier";
    case Op::AllGather: return "all_gather";
  }
  return "an unknown message";
}

std::string endpoint(const DistributedEnvironment& env) {
  return str("MASTER_ADDR:", env.master_port_name, " = ", env.master_address, ":", env.master_port);
}

void close_socket(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
}

// Waits for `events` on fd; false when the deadline passed first.
bool wait_for(int fd, short events, std::optional<Clock::time_point> deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, deadline ? remaining_ms(*deadline) : -1);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) fail(str("poll: ", std::strerror(errno)));
  }
}

// The whole buffer or an Error naming `peer` (a description such as "rank 3"). MSG_NOSIGNAL:
// a peer that is gone is an EPIPE here, not a SIGPIPE that kills the process.
void send_all(int fd, const void* data, std::size_t n, const std::string& peer, const char* during) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t sent = ::send(fd, p, n, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      fail(str("TcpGroup: sending to ", peer, " during ", during, " failed: ", std::strerror(errno),
               " (it exited or failed; see its own error)"));
    }
    p += sent;
    n -= static_cast<std::size_t>(sent);
  }
}

// The whole buffer, or an Error naming `peer` when it closes first; with a deadline, false when
// it passes first.
bool recv_all(int fd, void* data, std::size_t n, const std::string& peer, const char* during,
              std::optional<Clock::time_point> deadline = std::nullopt) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    if (deadline && !wait_for(fd, POLLIN, deadline)) return false;
    const ssize_t got = ::recv(fd, p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      fail(str("TcpGroup: receiving from ", peer, " during ", during, " failed: ", std::strerror(errno),
               " (it exited or failed; see its own error)"));
    }
    if (got == 0)
      fail(str("TcpGroup: ", peer, " closed its connection during ", during,
               " (it exited or failed; see its own error)"));
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

void set_no_delay(int fd) {
  // Collectives are request/response: Nagle's algorithm would hold back each small message.
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Rank 0's listening socket on every interface (rank 0's MASTER_ADDR is one of them).
int listen_on(const DistributedEnvironment& env) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(env.master_port);
  if (const int rc = ::getaddrinfo(nullptr, port.c_str(), &hints, &found); rc != 0)
    fail(str("TcpGroup: getaddrinfo for port ", port, ": ", ::gai_strerror(rc)));
  // IPv6 first, accepting IPv4 too (v6only off), so one socket serves either kind of address.
  std::vector<addrinfo*> candidates;
  for (addrinfo* a = found; a; a = a->ai_next) candidates.push_back(a);
  std::stable_sort(candidates.begin(), candidates.end(), [](const addrinfo* a, const addrinfo* b) {
    return a->ai_family == AF_INET6 && b->ai_family != AF_INET6;
  });
  int last_error = 0;
  int fd = -1;
  for (addrinfo* a : candidates) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_error = errno;
      continue;
    }
    const int one = 1, zero = 0;
    // A previous run's connections in TIME_WAIT must not keep the port from being reused.
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) break;
    last_error = errno;
    close_socket(fd);
  }
  ::freeaddrinfo(found);
  if (fd < 0)
    fail_expected(str(env.master_port_name, "=", env.master_port),
                  str("rank 0 cannot listen on it: ", std::strerror(last_error)), "a free TCP port on rank 0's host");
  return fd;
}

// One connection attempt to rank 0, bounded by the deadline; -1 with errno set on failure.
int try_connect(const addrinfo* a, Clock::time_point deadline) {
  int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
  if (fd < 0) return -1;
  int error = 0;
  if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      error = errno;
    } else if (!wait_for(fd, POLLOUT, deadline)) {
      error = ETIMEDOUT;
    } else {
      socklen_t length = sizeof error;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
    }
  }
  if (error != 0) {
    ::close(fd);
    errno = error;
    return -1;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // collectives block
  return fd;
}

}  // namespace

TcpGroup::TcpGroup(const DistributedEnvironment& environment) : environment_(environment) {
  const DistributedEnvironment& env = environment_;
  MINITRON_ASSERT(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size, "rank ", env.rank, " of ",
                  env.world_size);
  if (env.world_size == 1) return;
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(env.timeout_seconds));
  const std::string wait = str(env.timeout_seconds, " s (MINITRON_DISTRIBUTED_TIMEOUT)");
  try {
    if (env.rank == 0) {
      peers_.assign(static_cast<std::size_t>(env.world_size), -1);
      listener_ = listen_on(env);
      std::int64_t joined = 1;
      while (joined < env.world_size) {
        if (!wait_for(listener_, POLLIN, deadline)) {
          std::string missing;
          for (std::int64_t r = 1; r < env.world_size; ++r)
            if (peers_[static_cast<std::size_t>(r)] < 0) missing += str(missing.empty() ? "" : ", ", r);
          fail_expected(
              str("rank 0 listening on ", endpoint(env)),
              str(joined, " of ", env.world_size, " ranks joined within ", wait, "; missing rank(s) ", missing),
              str("all WORLD_SIZE=", env.world_size,
                  " ranks started (torchrun or srun start them) with this MASTER_ADDR and MASTER_PORT"));
        }
        int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
          fail(str("TcpGroup: accept on ", endpoint(env), ": ", std::strerror(errno)));
        }
        set_no_delay(fd);
        Hello hello;
        bool complete = false;
        try {
          complete = recv_all(fd, &hello, sizeof hello, "a connecting rank", "the handshake", deadline);
        } catch (const Error&) {
          complete = false;  // a connection that closes before introducing itself is no rank
        }
        if (!complete || hello.magic != kMagic) {
          ::close(fd);  // not a minitron rank (a port probe, another program): keep waiting
          continue;
        }
        if (hello.version != kVersion || hello.world_size != env.world_size || hello.rank < 1 ||
            hello.rank >= env.world_size || peers_[static_cast<std::size_t>(hello.rank)] >= 0) {
          ::close(fd);
          if (hello.version != kVersion)
            fail_expected(str("rank ", hello.rank, " joining ", endpoint(env)),
                          str("it speaks protocol version ", hello.version, ", rank 0 speaks ", kVersion),
                          "every rank running the same minitron build");
          if (hello.world_size != env.world_size)
            fail_expected(str("rank ", hello.rank, " joining ", endpoint(env)),
                          str("it has world size ", hello.world_size, ", rank 0 has ", env.world_size),
                          "one WORLD_SIZE for every rank of a run");
          if (hello.rank < 1 || hello.rank >= env.world_size)
            fail_expected(str("a rank joining ", endpoint(env)), str("it calls itself rank ", hello.rank),
                          str("ranks 1 to ", env.world_size - 1, " joining rank 0"));
          fail_expected(str("rank ", hello.rank, " joining ", endpoint(env)), "a second process claims that rank",
                        "each RANK started once (two runs sharing one MASTER_PORT?)");
        }
        peers_[static_cast<std::size_t>(hello.rank)] = fd;
        ++joined;
      }
      close_socket(listener_);  // nobody else may join
      Hello welcome;
      welcome.world_size = env.world_size;
      for (std::int64_t r = 1; r < env.world_size; ++r)
        send_all(peers_[static_cast<std::size_t>(r)], &welcome, sizeof welcome, str("rank ", r), "the handshake");
    } else {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* found = nullptr;
      const std::string port = std::to_string(env.master_port);
      int fd = -1;
      std::string last_error = "no attempt";
      while (fd < 0) {
        const int rc = ::getaddrinfo(env.master_address.c_str(), port.c_str(), &hints, &found);
        if (rc == 0) {
          for (const addrinfo* a = found; a && fd < 0; a = a->ai_next) {
            // At most a few seconds per address: MASTER_ADDR may resolve first to one whose
            // packets vanish (an IPv6 address without a route), before the one that answers.
            fd = try_connect(a, std::min(deadline, Clock::now() + std::chrono::seconds(5)));
            if (fd < 0) last_error = std::strerror(errno);
          }
          ::freeaddrinfo(found);
          found = nullptr;
        } else if (rc == EAI_AGAIN) {
          last_error = ::gai_strerror(rc);  // DNS not answering yet: keep trying
        } else {
          fail_expected(str("MASTER_ADDR=", env.master_address), str("cannot resolve it: ", ::gai_strerror(rc)),
                        "the host name or address of rank 0");
        }
        if (fd >= 0) break;
        if (Clock::now() >= deadline)
          fail_expected(str("rank ", env.rank, " connecting to rank 0 at ", endpoint(env)),
                        str("no connection within ", wait, " (last error: ", last_error, ")"),
                        "rank 0 started with the same MASTER_ADDR and MASTER_PORT and reachable from this host");
        // Rank 0 may not listen yet (ranks start in any order): retry, briefly spaced.
        std::this_thread::sleep_for(std::chrono::milliseconds(std::min(100, remaining_ms(deadline))));
      }
      peers_.assign(1, fd);
      set_no_delay(fd);
      Hello hello;
      hello.rank = env.rank;
      hello.world_size = env.world_size;
      send_all(fd, &hello, sizeof hello, "rank 0", "the handshake");
      Hello welcome;
      if (!recv_all(fd, &welcome, sizeof welcome, "rank 0", "the handshake", deadline))
        fail_expected(str("rank ", env.rank, " joined at ", endpoint(env)),
                      str("rank 0 did not see every rank join within ", wait),
                      str("all WORLD_SIZE=", env.world_size, " ranks started (torchrun or srun start them)"));
      if (welcome.magic != kMagic || welcome.world_size != env.world_size)
        fail_expected(str("rank ", env.rank, " joining ", endpoint(env)),
                      "rank 0 answered with another world size or protocol",
                      "every rank of the run sharing WORLD_SIZE and the minitron build");
    }
  } catch (...) {
    close_socket(listener_);
    for (int& fd : peers_) close_socket(fd);
    throw;
  }
}

TcpGroup::~TcpGroup() {
  close_socket(listener_);
  for (int& fd : peers_) close_socket(fd);
}

std::int64_t TcpGroup::rank() const { return environment_.rank; }
std::int64_t TcpGroup::world_size() const { return environment_.world_size; }

namespace {

// Rank 0's side: reads rank r's header and checks it announces the same collective.
void expect_header(int fd, std::int64_t r, Op op, std::uint64_t bytes) {
  Header h;
  const std::string peer = str("rank ", r);
  recv_all(fd, &h, sizeof h, peer, op_name(static_cast<std::uint32_t>(op)));
  if (h.magic != kMagic || h.op != static_cast<std::uint32_t>(op) || h.bytes != bytes)
    fail_expected(str("TcpGroup: rank ", r),
                  str("it called ", op_name(h.op), " of ", h.bytes, " bytes while rank 0 called ",
                      op_name(static_cast<std::uint32_t>(op)), " of ", bytes, " bytes"),
                  "every rank running the same collectives in the same order");
}

// Every non-zero rank sends its values; rank 0 adds them in rank order and sends the sums back.
template <typename T>
void sum_over_ranks(const std::vector<int>& peers, std::int64_t rank, std::span<T> values, Op op) {
  const std::size_t bytes = values.size_bytes();
  const char* during = op_name(static_cast<std::uint32_t>(op));
  if (rank == 0) {
    std::vector<T> incoming(values.size());
    for (std::size_t r = 1; r < peers.size(); ++r) {
      expect_header(peers[r], static_cast<std::int64_t>(r), op, bytes);
      recv_all(peers[r], incoming.data(), bytes, str("rank ", r), during);
      for (std::size_t i = 0; i < values.size(); ++i) values[i] += incoming[i];
    }
    for (std::size_t r = 1; r < peers.size(); ++r) send_all(peers[r], values.data(), bytes, str("rank ", r), during);
  } else {
    Header h;
    h.op = static_cast<std::uint32_t>(op);
    h.bytes = bytes;
    send_all(peers[0], &h, sizeof h, "rank 0", during);
    send_all(peers[0], values.data(), bytes, "rank 0", during);
    recv_all(peers[0], values.data(), bytes, "rank 0", during);
  }
}

}  // namespace

void TcpGroup::broadcast(std::span<std::byte> bytes) {
  if (environment_.world_size == 1) return;
  const char* during = op_name(static_cast<std::uint32_t>(Op::Broadcast));
  Header h;
  h.op = static_cast<std::uint32_t>(Op::Broadcast);
  h.bytes = bytes.size();
  if (environment_.rank == 0) {
    // Each rank first says it is ready for this broadcast (and of which size), so a mismatch
    // is an Error rather than bytes read by the wrong collective.
    for (std::size_t r = 1; r < peers_.size(); ++r)
      expect_header(peers_[r], static_cast<std::int64_t>(r), Op::Broadcast, h.bytes);
    for (std::size_t r = 1; r < peers_.size(); ++r)
      send_all(peers_[r], bytes.data(), bytes.size(), str("rank ", r), during);
  } else {
    send_all(peers_[0], &h, sizeof h, "rank 0", during);
    recv_all(peers_[0], bytes.data(), bytes.size(), "rank 0", during);
  }
}

void TcpGroup::all_gather(std::span<std::byte> bytes, std::span<const std::size_t> bounds) {
  const auto world = static_cast<std::size_t>(environment_.world_size);
  // Decreasing offsets would make a part's length wrap around (a read and write far beyond bytes).
  MINITRON_ASSERT(bounds.size() == world + 1 && bounds.front() == 0 && bounds.back() == bytes.size() &&
                      std::is_sorted(bounds.begin(), bounds.end()),
                  "TcpGroup::all_gather: ", bounds.size(), " bounds for ", world, " ranks and ", bytes.size(),
                  " bytes");
  if (world == 1) return;
  const char* during = op_name(static_cast<std::uint32_t>(Op::AllGather));
  auto part = [&](std::size_t r) { return bytes.subspan(bounds[r], bounds[r + 1] - bounds[r]); };
  if (environment_.rank == 0) {
    for (std::size_t r = 1; r < world; ++r) {
      // The header carries the whole size, and then the sender's part: ranks that agree on the
      // size but not on where a part lies would otherwise read other lengths than are sent and
      // wait on each other for ever, or leave bytes for the next collective to misread.
      expect_header(peers_[r], static_cast<std::int64_t>(r), Op::AllGather, bytes.size());
      std::uint64_t theirs[2] = {0, 0};
      recv_all(peers_[r], theirs, sizeof theirs, str("rank ", r), during);
      if (theirs[0] != bounds[r] || theirs[1] != bounds[r + 1])
        fail_expected(str("TcpGroup: rank ", r),
                      str("its all_gather part is bytes ", theirs[0], " to ", theirs[1], ", rank 0's bounds put it at ",
                          bounds[r], " to ", bounds[r + 1]),
                      "every rank passing the same bounds");
      recv_all(peers_[r], part(r).data(), part(r).size(), str("rank ", r), during);
    }
    for (std::size_t r = 1; r < world; ++r) send_all(peers_[r], bytes.data(), bytes.size(), str("rank ", r), during);
  } else {
    Header h;
    h.op = static_cast<std::uint32_t>(Op::AllGather);
    h.bytes = bytes.size();
    const auto rank = static_cast<std::size_t>(environment_.rank);
    const std::uint64_t mine_at[2] = {bounds[rank], bounds[rank + 1]};
    const std::span<std::byte> mine = part(rank);
    send_all(peers_[0], &h, sizeof h, "rank 0", during);
    send_all(peers_[0], mine_at, sizeof mine_at, "rank 0", during);
    send_all(peers_[0], mine.data(), mine.size(), "rank 0", during);
    recv_all(peers_[0], bytes.data(), bytes.size(), "rank 0", during);
  }
}

void TcpGroup::all_reduce_sum(std::span<float> values) {
  if (environment_.world_size > 1) sum_over_ranks(peers_, environment_.rank, values, Op::SumFloat);
}

void TcpGroup::all_reduce_sum(std::span<double> values) {
  if (environment_.world_size > 1) sum_over_ranks(peers_, environment_.rank, values, Op::SumDouble);
}

void TcpGroup::barrier() {
  if (environment_.world_size == 1) return;
  // One value, not none: a rank leaves only once rank 0's answer arrives, which rank 0 sends
  // after every rank's has.
  float token = 0;
  sum_over_ranks(peers_, environment_.rank, std::span<float>(&token, 1), Op::Barrier);
}

}  // namespace minitron
