// Prioritized replay buffer: contiguous float32 transition storage plus a float64 8-ary sum-tree.
//
// Plain C++ with no Python inside; csrc/bindings.cpp exposes it as opt_fast._replay.
// Semantic errors throw standard exceptions that pybind11 turns into Python ones:
//   std::invalid_argument / std::length_error -> ValueError, std::out_of_range -> IndexError,
//   std::bad_alloc -> MemoryError.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace opt_fast {

// Zero-filled array aligned to a 64-byte cache line. It comes from calloc, so the OS commits
// pages only when rows are written: a large capacity that is never filled costs no memory.
template <typename T>
class ZeroedArray {
 public:
  explicit ZeroedArray(std::size_t count);
  T* get() const noexcept { return data_; }

 private:
  struct Free {
    void operator()(void* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<void, Free> raw_;
  T* data_;
};

class ReplayBuffer {
 public:
  // capacity, obs_dim, act_dim >= 1. With ring = false, adding beyond capacity throws;
  // with ring = true, writes wrap around and overwrite the oldest rows.
  ReplayBuffer(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed, bool ring);

  int64_t capacity() const noexcept { return capacity_; }
  int64_t obs_dim() const noexcept { return obs_dim_; }
  int64_t act_dim() const noexcept { return act_dim_; }
  bool ring() const noexcept { return ring_; }
  int64_t size() const noexcept { return size_; }
  // Row the next add writes to; equals size() until a ring buffer first wraps.
  int64_t next_index() const noexcept { return next_; }
  double max_priority() const noexcept { return max_priority_; }
  double total_priority() const noexcept { return tree_.get()[0]; }

  // Whole-capacity storage, row-major: obs/next_obs [capacity, obs_dim], action
  // [capacity, act_dim], reward/done [capacity].
  float* obs() const noexcept { return obs_.get(); }
  float* action() const noexcept { return action_.get(); }
  float* reward() const noexcept { return reward_.get(); }
  float* next_obs() const noexcept { return next_obs_.get(); }
  float* done() const noexcept { return done_.get(); }
  // Leaf priorities, one per row ([capacity]); rows never written hold 0.
  const double* priorities() const noexcept { return leaves(); }

  // Appends one transition at the current max priority and returns its row.
  int64_t add(const float* obs, const float* action, float reward, const float* next_obs,
              float done);

  // Appends n transitions with one priority (the max priority when empty) and writes their rows
  // to out_rows. Rows are placed as by n successive adds, so with ring = true and n > capacity
  // only the last capacity rows survive. Nothing is written when an argument is invalid.
  void add_batch(int64_t n, const float* obs, const float* action, const float* reward,
                 const float* next_obs, const float* done, std::optional<double> priority,
                 int64_t* out_rows);

  // batch_size rows drawn uniformly with replacement from [0, size).
  void sample_uniform(int64_t batch_size, int64_t* out_rows);

  // Proportional sampling, stratified: the total mass is split into batch_size equal segments
  // and one uniform point is drawn in each, so out_rows is sorted by prefix mass.
  void sample_prioritized(int64_t batch_size, int64_t* out_rows);

  // Sets priorities[rows[i]] = values[i]; with repeated rows the last value wins. Raises the
  // max priority to the largest value. Nothing changes when an argument is invalid.
  void update_priorities(int64_t n, const int64_t* rows, const double* values);

  void get_priorities(int64_t n, const int64_t* rows, double* out) const;

  // Copies rows into caller-owned contiguous arrays shaped like the storage with n rows.
  void gather(int64_t n, const int64_t* rows, float* obs, float* action, float* reward,
              float* next_obs, float* done) const;

  // Text form of the std::mt19937_64 state (the standard stream format).
  std::string rng_state() const;

  // Replaces the whole state. Arrays hold `size` rows; priorities are the leaf values, from
  // which the tree is rebuilt (internal sums are recomputed exactly as updates compute them,
  // so totals and future samples are bit-identical to the saved buffer).
  void load_state(int64_t size, int64_t next_index, double max_priority, const float* obs,
                  const float* action, const float* reward, const float* next_obs,
                  const float* done, const double* priorities, const std::string& rng_state);

 private:
  void check_rows(int64_t n, const int64_t* rows) const;
  double uniform01();
  // Recomputes the internal nodes above leaves [first, last) bottom-up.
  void rebuild(int64_t first, int64_t last);
  // Number of levels below the root.
  int depth() const noexcept { return static_cast<int>(level_offset_.size()) - 2; }
  double* leaves() const noexcept { return tree_.get() + level_offset_[depth()]; }
  void write_row(int64_t row, const float* obs, const float* action, float reward,
                 const float* next_obs, float done);

  int64_t capacity_;
  int64_t obs_dim_;
  int64_t act_dim_;
  bool ring_;
  int64_t size_ = 0;
  int64_t next_ = 0;
  double max_priority_ = 1.0;

  // 8-ary sum-tree stored level by level, root first: level l spans [level_offset_[l],
  // level_offset_[l + 1]) (the last entry is the total size, every level a multiple of 8), the
  // children of node i of level l are the 8 entries starting at level_offset_[l + 1] + 8 i, and
  // the last level holds one leaf per row. A node's 8 children fill one 64-byte cache line, so a
  // descent over 2M rows touches 7 lines instead of the 21 of a binary tree. Every internal node
  // is always exactly the left-to-right sum of its children (never updated by deltas).
  std::vector<int64_t> level_offset_;
  ZeroedArray<double> tree_;

  ZeroedArray<float> obs_;
  ZeroedArray<float> action_;
  ZeroedArray<float> reward_;
  ZeroedArray<float> next_obs_;
  ZeroedArray<float> done_;

  std::mt19937_64 rng_;
};

}  // namespace opt_fast
