// pybind11 binding of opt_fast::ReplayBuffer as opt_fast._replay.ReplayBuffer.
//
// Array arguments must already be numpy arrays of the exact dtype (float32 data, float64
// priorities, int64 indices), C-contiguous and aligned; anything else raises TypeError/ValueError
// instead of being converted silently. opt_fast/replay.py does the documented conversions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "replay_buffer.hpp"

namespace py = pybind11;
using opt_fast::ReplayBuffer;

namespace {

constexpr int kAligned = 0x0100;  // NPY_ARRAY_ALIGNED, part of numpy's stable C API

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    s += (d ? ", " : "") + std::to_string(a.shape(d));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks that `obj` is a T array of shape (rows[, cols]); rows < 0 accepts any row count,
// cols == 0 means one-dimensional.
template <typename T>
py::array_t<T> require(const py::handle& obj, const char* name, int64_t rows, int64_t cols) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  const auto expected = py::dtype::of<T>();
  if (!py::isinstance<py::array_t<T, 0>>(arr)) {
    throw py::type_error(std::string(name) + " must have dtype " +
                         std::string(py::str(expected)) + ", got " +
                         std::string(py::str(arr.dtype())));
  }
  const py::ssize_t ndim = cols == 0 ? 1 : 2;
  const bool shape_ok = arr.ndim() == ndim && (rows < 0 || arr.shape(0) == rows) &&
                        (ndim == 1 || arr.shape(1) == cols);
  if (!shape_ok) {
    const std::string r = rows < 0 ? "n" : std::to_string(rows);
    const std::string want = ndim == 1 ? "(" + r + ",)" : "(" + r + ", " + std::to_string(cols) + ")";
    throw py::value_error(std::string(name) + " must have shape " + want + ", got " +
                          shape_str(arr));
  }
  if (!(arr.flags() & py::array::c_style) || !(arr.flags() & kAligned)) {
    throw py::value_error(std::string(name) + " must be C-contiguous and aligned");
  }
  return py::reinterpret_borrow<py::array_t<T>>(arr);
}

// Whole-capacity storage as a writable numpy view; `owner` keeps the buffer alive.
py::array_t<float> view(const py::object& owner, float* data, int64_t rows, int64_t cols) {
  if (cols == 0) return py::array_t<float>({rows}, {sizeof(float)}, data, owner);
  return py::array_t<float>({rows, cols}, {static_cast<int64_t>(sizeof(float)) * cols,
                                           static_cast<int64_t>(sizeof(float))},
                            data, owner);
}

py::array_t<int64_t> new_rows(int64_t n) { return py::array_t<int64_t>(n); }

using DataFn = float* (ReplayBuffer::*)() const noexcept;
using WidthFn = int64_t (ReplayBuffer::*)() const noexcept;

// Property getter exposing one storage array; width == nullptr for per-row scalars.
auto storage(DataFn data, WidthFn width) {
  return [data, width](const py::object& self) {
    auto& b = self.cast<ReplayBuffer&>();
    return view(self, (b.*data)(), b.capacity(), width ? (b.*width)() : 0);
  };
}

// Method returning batch_size sampled rows as a new int64 array.
auto sampler(void (ReplayBuffer::*sample)(int64_t, int64_t*)) {
  return [sample](ReplayBuffer& b, int64_t batch_size) {
    auto rows = new_rows(batch_size > 0 ? batch_size : 0);
    (b.*sample)(batch_size, rows.mutable_data());
    return rows;
  };
}

}  // namespace

PYBIND11_MODULE(_replay, m) {
  m.doc() = "Native prioritized replay buffer (sum-tree) for opt_fast; see opt_fast.replay.";

  py::class_<ReplayBuffer>(m, "ReplayBuffer")
      .def(py::init<int64_t, int64_t, int64_t, uint64_t, bool>(), py::arg("capacity"),
           py::arg("obs_dim"), py::arg("act_dim"), py::arg("seed"), py::arg("ring"))
      .def_property_readonly("capacity", &ReplayBuffer::capacity)
      .def_property_readonly("obs_dim", &ReplayBuffer::obs_dim)
      .def_property_readonly("act_dim", &ReplayBuffer::act_dim)
      .def_property_readonly("ring", &ReplayBuffer::ring)
      .def_property_readonly("size", &ReplayBuffer::size)
      .def_property_readonly("next_index", &ReplayBuffer::next_index)
      .def_property_readonly("max_priority", &ReplayBuffer::max_priority)
      .def_property_readonly("total_priority", &ReplayBuffer::total_priority)
      .def_property_readonly("obs", storage(&ReplayBuffer::obs, &ReplayBuffer::obs_dim))
      .def_property_readonly("action", storage(&ReplayBuffer::action, &ReplayBuffer::act_dim))
      .def_property_readonly("reward", storage(&ReplayBuffer::reward, nullptr))
      .def_property_readonly("next_obs",
                             storage(&ReplayBuffer::next_obs, &ReplayBuffer::obs_dim))
      .def_property_readonly("done", storage(&ReplayBuffer::done, nullptr))
      .def(
          "add",
          [](ReplayBuffer& b, const py::object& obs, const py::object& action, float reward,
             const py::object& next_obs, float done) {
            auto o = require<float>(obs, "obs", b.obs_dim(), 0);
            auto a = require<float>(action, "action", b.act_dim(), 0);
            auto no = require<float>(next_obs, "next_obs", b.obs_dim(), 0);
            return b.add(o.data(), a.data(), reward, no.data(), done);
          },
          py::arg("obs"), py::arg("action"), py::arg("reward"), py::arg("next_obs"),
          py::arg("done"), "Append one transition at the max priority; returns its row.")
      .def(
          "add_batch",
          [](ReplayBuffer& b, const py::object& obs, const py::object& action,
             const py::object& reward, const py::object& next_obs, const py::object& done,
             std::optional<double> priority) {
            auto o = require<float>(obs, "obs", -1, b.obs_dim());
            const int64_t n = o.shape(0);
            auto a = require<float>(action, "action", n, b.act_dim());
            auto r = require<float>(reward, "reward", n, 0);
            auto no = require<float>(next_obs, "next_obs", n, b.obs_dim());
            auto d = require<float>(done, "done", n, 0);
            auto rows = new_rows(n);
            b.add_batch(n, o.data(), a.data(), r.data(), no.data(), d.data(), priority,
                        rows.mutable_data());
            return rows;
          },
          py::arg("obs"), py::arg("action"), py::arg("reward"), py::arg("next_obs"),
          py::arg("done"), py::arg("priority"),
          "Append n transitions at `priority` (None: the max priority); returns their rows.")
      .def("sample_uniform", sampler(&ReplayBuffer::sample_uniform), py::arg("batch_size"),
           "batch_size rows drawn uniformly with replacement.")
      .def("sample_prioritized", sampler(&ReplayBuffer::sample_prioritized),
           py::arg("batch_size"), "batch_size rows drawn by priority, one per mass segment.")
      .def(
          "update_priorities",
          [](ReplayBuffer& b, const py::object& indices, const py::object& priorities) {
            auto idx = require<int64_t>(indices, "indices", -1, 0);
            auto pri = require<double>(priorities, "priorities", idx.shape(0), 0);
            b.update_priorities(idx.shape(0), idx.data(), pri.data());
          },
          py::arg("indices"), py::arg("priorities"))
      .def(
          "get_priorities",
          [](const ReplayBuffer& b, const py::object& indices) {
            auto idx = require<int64_t>(indices, "indices", -1, 0);
            py::array_t<double> out(idx.shape(0));
            b.get_priorities(idx.shape(0), idx.data(), out.mutable_data());
            return out;
          },
          py::arg("indices"))
      .def(
          "gather",
          [](const ReplayBuffer& b, const py::object& indices) {
            auto idx = require<int64_t>(indices, "indices", -1, 0);
            const int64_t n = idx.shape(0);
            py::array_t<float> obs({n, b.obs_dim()});
            py::array_t<float> action({n, b.act_dim()});
            py::array_t<float> reward(n);
            py::array_t<float> next_obs({n, b.obs_dim()});
            py::array_t<float> done(n);
            float* po = obs.mutable_data();
            float* pa = action.mutable_data();
            float* pr = reward.mutable_data();
            float* pn = next_obs.mutable_data();
            float* pd = done.mutable_data();
            const int64_t* rows = idx.data();
            {
              // Storage is allocated once for the whole capacity, so a concurrent add from
              // another thread can at worst overwrite rows being copied, never move memory.
              py::gil_scoped_release release;
              b.gather(n, rows, po, pa, pr, pn, pd);
            }
            return py::make_tuple(obs, action, reward, next_obs, done);
          },
          py::arg("indices"), "Copy rows into new (obs, action, reward, next_obs, done) arrays.")
      .def("rng_state", &ReplayBuffer::rng_state)
      .def(
          "priorities",
          [](const ReplayBuffer& b) {
            // A copy: writing leaves directly would break the sum-tree invariant.
            py::array_t<double> out(b.size());
            std::copy(b.priorities(), b.priorities() + b.size(), out.mutable_data());
            return out;
          },
          "Copy of the priorities of rows [0, size).")
      .def(
          "load_state",
          [](ReplayBuffer& b, int64_t next_index, double max_priority,
             const py::object& obs, const py::object& action, const py::object& reward,
             const py::object& next_obs, const py::object& done, const py::object& priorities,
             const std::string& rng_state) {
            auto o = require<float>(obs, "obs", -1, b.obs_dim());
            const int64_t size = o.shape(0);
            auto a = require<float>(action, "action", size, b.act_dim());
            auto r = require<float>(reward, "reward", size, 0);
            auto no = require<float>(next_obs, "next_obs", size, b.obs_dim());
            auto d = require<float>(done, "done", size, 0);
            auto p = require<double>(priorities, "priority", size, 0);
            b.load_state(size, next_index, max_priority, o.data(), a.data(), r.data(), no.data(),
                         d.data(), p.data(), rng_state);
          },
          py::arg("next_index"), py::arg("max_priority"), py::arg("obs"),
          py::arg("action"), py::arg("reward"), py::arg("next_obs"), py::arg("done"),
          py::arg("priority"), py::arg("rng_state"));
}
