// The machinery of the op conformance table (test_backend_ops.cpp): one case is an op at one
// shape, declared as its tensors, the engine call, the reference call and the outputs to compare.
// run_op_case() draws the inputs from a fixed seed, rounds them to the dtypes the engine stores,
// runs the engine and the reference (in double, on those rounded values) and compares.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/bf16.h"
#include "util/error.h"
#include "util/random.h"

namespace minitron::test {

// What a tensor is to the engine; its dtype on each engine follows from this (backend.h).
enum class Role {
  Activation,  // activation_dtype(): bf16 on cuda, T on cpu
  Gradient,    // gradient_dtype(): parameter gradients, f32 on cuda
  Statistic,   // "fp32" in backend.h; f64 on cpu-f64, which keeps a check entirely in double
  Master,      // fp32 master weights: only where parameters are not fp32 or wider, else absent
  Ids,         // i32 token ids and targets
};

// How a tensor starts: random values (ids: integers in [lo, hi)), or NaN for outputs the op
// overwrites, so that an element it never writes fails the comparison.
enum class Fill { Random, Poison };

struct TensorSpec {
  std::string name;
  Role role;
  std::int64_t numel;
  Fill fill = Fill::Random;
  double lo = -1, hi = 1;
  std::string draw_as = "";  // another tensor whose draw this one repeats (master = params)
};

// Where a result may differ from the double reference: |got - want| <= abs + rel * |want|.
struct Tolerance {
  double rel, abs;
  const char* reason;
};
// One tolerance per engine storage dtype.
struct Tolerances {
  Tolerance bf16, f32, f64;
};

// The reference's side: every tensor's values in double, exactly as the engine stored them.
class HostTensors {
 public:
  bool has(const std::string& name) const { return values_.count(name) || ids_.count(name); }
  std::vector<double>& values(const std::string& name) {
    const auto it = values_.find(name);
    MINITRON_ASSERT(it != values_.end(), "op table: no float tensor '", name, "'");
    return it->second;
  }
  double* operator()(const std::string& name) { return values(name).data(); }
  const std::int32_t* ids(const std::string& name) const {
    const auto it = ids_.find(name);
    MINITRON_ASSERT(it != ids_.end(), "op table: no id tensor '", name, "'");
    return it->second.data();
  }
  void set(const std::string& name, std::vector<double> v) { values_[name] = std::move(v); }
  void set_ids(const std::string& name, std::vector<std::int32_t> v) { ids_[name] = std::move(v); }

 private:
  std::map<std::string, std::vector<double>> values_;
  std::map<std::string, std::vector<std::int32_t>> ids_;
};

// The engine's side: its tensors by name, and scalar results (sum_of_squares) by name.
class EngineTensors {
 public:
  explicit EngineTensors(Backend& backend) : backend_(backend) {}
  // An absent tensor (master weights on an fp32 engine) is the empty Tensor.
  Tensor operator[](const std::string& name) const {
    const auto it = buffers_.find(name);
    return it == buffers_.end() ? Tensor{} : it->second.tensor();
  }
  void record(const std::string& name, double value) { scalars_[name] = {value}; }

  BackendBuffer& add(const std::string& name, std::int64_t numel, DType dtype) {
    return buffers_.emplace(name, BackendBuffer(backend_, numel, dtype)).first->second;
  }
  std::vector<double> result(const std::string& name) {
    if (const auto it = scalars_.find(name); it != scalars_.end()) return it->second;
    const Tensor t = (*this)[name];
    std::vector<double> out(static_cast<std::size_t>(t.numel));
    backend_.download_f64(out.data(), t);
    return out;
  }

 private:
  Backend& backend_;
  std::map<std::string, BackendBuffer> buffers_;
  std::map<std::string, std::vector<double>> scalars_;
};

// One op at one shape.
struct OpCase {
  std::string name;
  std::vector<TensorSpec> tensors;
  std::function<void(Backend&, EngineTensors&)> run;
  std::function<void(HostTensors&)> reference;
  std::vector<std::string> compared;  // tensors (or recorded scalars) checked after the run
  Tolerances tolerance;
  // Inputs derived from the drawn ones (attention's out and lse from q, k, v), computed by the
  // reference before upload; they are then rounded to their dtype like every input.
  std::function<void(HostTensors&)> prepare = nullptr;
};

// A table entry: an op, the shapes it runs at, and how one shape becomes a case. The shape
// type is the op's own (a struct of named sizes with a label() for the test name).
template <typename Shape>
struct OpEntry {
  std::string name;
  std::vector<Shape> shapes;
  std::function<std::vector<TensorSpec>(const Shape&)> tensors;
  std::function<void(Backend&, EngineTensors&, const Shape&)> run;
  std::function<void(HostTensors&, const Shape&)> reference;
  std::vector<std::string> compared;
  Tolerances tolerance;
  std::function<void(HostTensors&, const Shape&)> prepare = nullptr;
};

template <typename Shape>
void add_entry(std::vector<OpCase>& cases, const OpEntry<Shape>& entry) {
  for (const Shape& shape : entry.shapes) {
    OpCase c{str(entry.name, "_", shape.label()),
             entry.tensors(shape),
             [run = entry.run, shape](Backend& b, EngineTensors& t) { run(b, t, shape); },
             [reference = entry.reference, shape](HostTensors& h) { reference(h, shape); },
             entry.compared,
             entry.tolerance};
    if (entry.prepare)
      c.prepare = [prepare = entry.prepare, shape](HostTensors& h) { prepare(h, shape); };
    cases.push_back(std::move(c));
  }
}

inline DType dtype_on(const Backend& backend, Role role) {
  switch (role) {
    case Role::Activation: return backend.activation_dtype();
    case Role::Gradient: return backend.gradient_dtype();
    case Role::Statistic:
    case Role::Master: return backend.activation_dtype() == DType::F64 ? DType::F64 : DType::F32;
    case Role::Ids: return DType::I32;
  }
  return DType::F32;
}

inline bool present_on(const Backend& backend, Role role) {
  const DType a = backend.activation_dtype();
  return role != Role::Master || (a != DType::F32 && a != DType::F64);
}

// The value a tensor of `dtype` holds after upload() of x, which takes floats even into f64
// tensors (so a prepared f64 input is rounded to float too).
inline double stored_value(double x, DType dtype) {
  const float f = static_cast<float>(x);
  return dtype == DType::BF16 ? round_to_bf16(f) : f;
}

inline const Tolerance& tolerance_for(const Tolerances& t, DType activation) {
  return activation == DType::BF16 ? t.bf16 : activation == DType::F32 ? t.f32 : t.f64;
}

// Fixed per case and tensor, so that any one case can be rerun alone with the same inputs.
inline std::uint64_t draw_seed(const std::string& case_name, const std::string& tensor) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (const char ch : case_name + "/" + tensor)
    h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  return h;
}

// Every element within the tolerance; on failure one line naming the worst element.
inline void expect_conforms(const std::string& what, const std::vector<double>& got,
                            const std::vector<double>& want, const Tolerance& tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::size_t misses = 0, worst = 0;
  double worst_ratio = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]);
    const double bound = tol.abs + tol.rel * std::abs(want[i]);
    if (!(err <= bound)) ++misses;
    const double ratio = err == 0       ? 0
                         : err <= bound ? err / bound
                                        : std::numeric_limits<double>::infinity();
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  if (misses == 0) return;
  ADD_FAILURE() << what << ": " << misses << " of " << got.size()
                << " elements out of tolerance; worst [" << worst << "]: got " << got[worst]
                << ", expected " << want[worst] << " (|error| "
                << std::abs(got[worst] - want[worst]) << " > " << tol.abs << " + " << tol.rel
                << " * |expected|: " << tol.reason << ")";
}

inline void run_op_case(Backend& backend, const std::string& engine, const OpCase& c) {
  HostTensors host;
  EngineTensors engine_tensors(backend);
  std::set<std::string> absent;  // master weights on an fp32 or f64 engine
  for (const TensorSpec& spec : c.tensors) {
    if (!present_on(backend, spec.role)) {
      absent.insert(spec.name);
      continue;
    }
    const std::string& source = spec.draw_as.empty() ? spec.name : spec.draw_as;
    Xoshiro256 rng(draw_seed(c.name, source));
    if (spec.role == Role::Ids) {
      std::vector<std::int32_t> ids(static_cast<std::size_t>(spec.numel));
      for (std::int32_t& x : ids)
        x = static_cast<std::int32_t>(spec.lo) +
            static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(spec.hi - spec.lo)));
      host.set_ids(spec.name, ids);
      backend.upload_i32(engine_tensors.add(spec.name, spec.numel, DType::I32), ids.data());
      continue;
    }
    std::vector<double> values(static_cast<std::size_t>(spec.numel));
    for (double& x : values) {
      const double uniform = static_cast<double>(rng.next() >> 11) * 0x1.0p-53;  // [0, 1)
      x = spec.fill == Fill::Poison ? std::numeric_limits<double>::quiet_NaN()
                                    : static_cast<float>(spec.lo + (spec.hi - spec.lo) * uniform);
    }
    host.set(spec.name, values);
  }
  if (c.prepare) c.prepare(host);
  for (const TensorSpec& spec : c.tensors) {
    if (!present_on(backend, spec.role) || spec.role == Role::Ids) continue;
    const DType dtype = dtype_on(backend, spec.role);
    std::vector<double>& values = host.values(spec.name);
    std::vector<float> upload(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = stored_value(values[i], dtype);
      upload[i] = static_cast<float>(values[i]);
    }
    backend.upload(engine_tensors.add(spec.name, spec.numel, dtype), upload.data());
  }

  c.run(backend, engine_tensors);
  backend.synchronize();
  c.reference(host);

  const Tolerance& tol = tolerance_for(c.tolerance, backend.activation_dtype());
  for (const std::string& name : c.compared) {
    if (absent.count(name)) continue;
    expect_conforms(str(engine, " ", c.name, " ", name), engine_tensors.result(name),
                    host.values(name), tol);
  }
}

}  // namespace minitron::test
