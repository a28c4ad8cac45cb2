// The message a user would read: what a call throws as minitron::Error.
#pragma once

#include <functional>
#include <string>

#include "util/error.h"

namespace minitron::testing {

// The message of the Error that f throws; "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace minitron::testing
