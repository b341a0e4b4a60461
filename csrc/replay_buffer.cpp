#include "replay_buffer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>

namespace opt_fast {

namespace {

int64_t require_positive(int64_t value, const char* name) {
  if (value < 1) {
    throw std::invalid_argument(std::string(name) + " must be >= 1, got " + std::to_string(value));
  }
  return value;
}

// Far beyond any memory (>= 20 bytes per row), and small enough that tree sizes cannot overflow.
constexpr int64_t kMaxCapacity = int64_t{1} << 40;

int64_t check_capacity(int64_t capacity) {
  if (require_positive(capacity, "capacity") > kMaxCapacity) {
    throw std::length_error("capacity must be <= 2**40, got " + std::to_string(capacity));
  }
  return capacity;
}

// Element count of a [rows, cols] array, rejecting counts whose size in bytes could overflow.
std::size_t element_count(int64_t rows, int64_t cols, const char* name) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 16;
  if (cols > kMax / rows) {
    throw std::length_error(std::string("capacity * ") + name + " is too large to allocate");
  }
  return static_cast<std::size_t>(rows * cols);
}

void check_priority(double value, const char* what) {
  if (!std::isfinite(value) || value < 0.0) {
    std::ostringstream msg;
    msg << what << " must be finite and >= 0, got " << value;
    throw std::invalid_argument(msg.str());
  }
}

void check_done(int64_t n, const float* done) {
  for (int64_t i = 0; i < n; ++i) {
    if (done[i] != 0.0f && done[i] != 1.0f) {
      std::ostringstream msg;
      msg << "done must be 0 or 1, got " << done[i] << " at row " << i;
      throw std::invalid_argument(msg.str());
    }
  }
}

constexpr int64_t kFanout = 8;       // children per node: 8 doubles = one cache line
constexpr std::size_t kAlign = 64;   // cache line size in bytes

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Start of each tree level, root first, then the total size; see ReplayBuffer::level_offset_.
std::vector<int64_t> tree_layout(int64_t capacity) {
  std::vector<int64_t> sizes{round_up(capacity, kFanout)};  // leaves first
  while (sizes.back() > kFanout) sizes.push_back(round_up(sizes.back() / kFanout, kFanout));
  sizes.push_back(kFanout);  // the root, padded so that every level starts on a cache line
  std::vector<int64_t> offsets{0};
  for (auto it = sizes.rbegin(); it != sizes.rend(); ++it) offsets.push_back(offsets.back() + *it);
  return offsets;
}

inline void prefetch(const double* address) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address);
#else
  (void)address;  // other compilers: rely on the hardware prefetcher
#endif
}

// Left-to-right sum of one node's children; prefix sums in sample_prioritized use the same order.
double sum_children(const double* child) {
  double sum = 0.0;
  for (int64_t k = 0; k < kFanout; ++k) sum += child[k];
  return sum;
}

}  // namespace

template <typename T>
ZeroedArray<T>::ZeroedArray(std::size_t count)
    : raw_(std::calloc(count * sizeof(T) + kAlign, 1)) {
  if (!raw_) throw std::bad_alloc();
  const auto address = reinterpret_cast<std::uintptr_t>(raw_.get());
  data_ = reinterpret_cast<T*>((address + kAlign - 1) / kAlign * kAlign);
}

ReplayBuffer::ReplayBuffer(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed,
                           bool ring)
    : capacity_(check_capacity(capacity)),
      obs_dim_(require_positive(obs_dim, "obs_dim")),
      act_dim_(require_positive(act_dim, "act_dim")),
      ring_(ring),
      level_offset_(tree_layout(capacity_)),
      tree_(static_cast<std::size_t>(level_offset_.back())),
      obs_(element_count(capacity_, obs_dim_, "obs_dim")),
      action_(element_count(capacity_, act_dim_, "act_dim")),
      reward_(static_cast<std::size_t>(capacity_)),
      next_obs_(element_count(capacity_, obs_dim_, "obs_dim")),
      done_(static_cast<std::size_t>(capacity_)),
      rng_(seed) {}

void ReplayBuffer::write_row(int64_t row, const float* obs, const float* action, float reward,
                             const float* next_obs, float done) {
  std::memcpy(obs_.get() + row * obs_dim_, obs, sizeof(float) * obs_dim_);
  std::memcpy(action_.get() + row * act_dim_, action, sizeof(float) * act_dim_);
  reward_.get()[row] = reward;
  std::memcpy(next_obs_.get() + row * obs_dim_, next_obs, sizeof(float) * obs_dim_);
  done_.get()[row] = done;
}

void ReplayBuffer::rebuild(int64_t first, int64_t last) {
  double* tree = tree_.get();
  for (int level = depth() - 1; level >= 0; --level) {
    first /= kFanout;
    last = (last - 1) / kFanout + 1;
    for (int64_t node = first; node < last; ++node) {
      tree[level_offset_[level] + node] =
          sum_children(tree + level_offset_[level + 1] + kFanout * node);
    }
  }
}

int64_t ReplayBuffer::add(const float* obs, const float* action, float reward,
                          const float* next_obs, float done) {
  int64_t row = 0;
  add_batch(1, obs, action, &reward, next_obs, &done, std::nullopt, &row);
  return row;
}

void ReplayBuffer::add_batch(int64_t n, const float* obs, const float* action,
                             const float* reward, const float* next_obs, const float* done,
                             std::optional<double> priority, int64_t* out_rows) {
  if (n < 0) throw std::invalid_argument("add_batch needs n >= 0, got " + std::to_string(n));
  if (priority) check_priority(*priority, "priority");
  check_done(n, done);
  if (!ring_ && n > capacity_ - size_) {
    throw std::length_error("replay buffer is full: adding " + std::to_string(n) + " rows to " +
                            std::to_string(size_) + " of capacity " +
                            std::to_string(capacity_) +
                            " (construct it with ring=True to overwrite the oldest rows)");
  }
  if (n == 0) return;

  const double value = priority.value_or(max_priority_);
  for (int64_t i = 0; i < n; ++i) out_rows[i] = (next_ + i) % capacity_;
  // Rows older than the last `capacity` would be overwritten within this same call.
  const int64_t skipped = std::max<int64_t>(0, n - capacity_);
  for (int64_t i = skipped; i < n; ++i) {
    const int64_t row = out_rows[i];
    write_row(row, obs + i * obs_dim_, action + i * act_dim_, reward[i], next_obs + i * obs_dim_,
              done[i]);
    leaves()[row] = value;
  }
  // The written rows form at most two contiguous leaf ranges (before and after the wrap).
  const int64_t first = out_rows[skipped];
  const int64_t count = n - skipped;
  if (first + count <= capacity_) {
    rebuild(first, first + count);
  } else {
    rebuild(first, capacity_);
    rebuild(0, first + count - capacity_);
  }

  max_priority_ = std::max(max_priority_, value);
  size_ = std::min(capacity_, size_ + n);
  next_ = ring_ ? (next_ + n) % capacity_ : next_ + n;
}

double ReplayBuffer::uniform01() {
  // The top 53 bits give every double in [0, 1) on a 2^-53 grid; unlike
  // std::uniform_real_distribution this is identical across standard libraries.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void ReplayBuffer::sample_uniform(int64_t batch_size, int64_t* out_rows) {
  if (batch_size <= 0) {
    throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(batch_size));
  }
  if (size_ == 0) throw std::invalid_argument("cannot sample from an empty replay buffer");
  const uint64_t n = static_cast<uint64_t>(size_);
  // Rejecting draws below 2^64 mod n leaves a range whose length is a multiple of n: no bias.
  const uint64_t threshold = (0 - n) % n;
  for (int64_t i = 0; i < batch_size; ++i) {
    uint64_t draw = rng_();
    while (draw < threshold) draw = rng_();
    out_rows[i] = static_cast<int64_t>(draw % n);
  }
}

void ReplayBuffer::sample_prioritized(int64_t batch_size, int64_t* out_rows) {
  if (batch_size <= 0) {
    throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(batch_size));
  }
  if (size_ == 0) throw std::invalid_argument("cannot sample from an empty replay buffer");
  const double total = total_priority();
  if (!(total > 0.0)) {
    throw std::invalid_argument("cannot sample by priority: all priorities are 0");
  }
  const double segment = total / static_cast<double>(batch_size);
  std::vector<double> mass(static_cast<std::size_t>(batch_size));
  for (int64_t j = 0; j < batch_size; ++j) {
    mass[j] = (static_cast<double>(j) + uniform01()) * segment;
    out_rows[j] = 0;  // node index within the current level, the root to start
  }
  // Descend level by level across the whole batch: the loads of one level are independent, so
  // the CPU overlaps their cache misses. Counts and selects instead of branches: the choice is
  // random, and mispredicted branches would cost more than the memory.
  const double* tree = tree_.get();
  for (int level = 0; level < depth(); ++level) {
    const double* children = tree + level_offset_[level + 1];
    // The next level's lines are requested as soon as each node is chosen, so the whole batch
    // waits for memory once per level instead of once per node.
    const double* next_children = level + 1 < depth() ? tree + level_offset_[level + 2] : nullptr;
    for (int64_t j = 0; j < batch_size; ++j) {
      const double* child = children + kFanout * out_rows[j];
      // prefix[k] = child[0] + ... + child[k - 1], summed in the order sum_children uses.
      double prefix[kFanout];
      prefix[0] = 0.0;
      int64_t below = 0;          // children k >= 1 whose prefix is <= the mass
      int64_t last_positive = 0;  // clamps a mass rounded up to the node total
      for (int64_t k = 1; k < kFanout; ++k) {
        prefix[k] = prefix[k - 1] + child[k - 1];
        below += prefix[k] <= mass[j];
        last_positive = child[k] > 0.0 ? k : last_positive;
      }
      // A zero child k has prefix[k] == prefix[k + 1], so counting skips it; only a mass at or
      // past the node total could end on a trailing zero child, which the clamp prevents.
      const int64_t chosen = std::min(below, last_positive);
      mass[j] -= prefix[chosen];
      out_rows[j] = kFanout * out_rows[j] + chosen;
      if (next_children) prefetch(next_children + kFanout * out_rows[j]);
    }
  }
}

void ReplayBuffer::check_rows(int64_t n, const int64_t* rows) const {
  for (int64_t i = 0; i < n; ++i) {
    if (rows[i] < 0 || rows[i] >= size_) {
      throw std::out_of_range("index " + std::to_string(rows[i]) + " at position " +
                              std::to_string(i) + " is out of range for a replay buffer of size " +
                              std::to_string(size_));
    }
  }
}

void ReplayBuffer::update_priorities(int64_t n, const int64_t* rows, const double* values) {
  check_rows(n, rows);
  for (int64_t i = 0; i < n; ++i) check_priority(values[i], "priority");

  std::vector<int64_t> node(rows, rows + n);
  for (int64_t i = 0; i < n; ++i) {
    leaves()[rows[i]] = values[i];
    max_priority_ = std::max(max_priority_, values[i]);
  }
  // Level by level: all leaves share one depth, so when a level is recomputed every changed
  // child below it is already final; repeated parents are recomputed to the same value.
  double* tree = tree_.get();
  for (int level = depth() - 1; level >= 0; --level) {
    for (int64_t i = 0; i < n; ++i) {
      node[i] /= kFanout;
      tree[level_offset_[level] + node[i]] =
          sum_children(tree + level_offset_[level + 1] + kFanout * node[i]);
    }
  }
}

void ReplayBuffer::get_priorities(int64_t n, const int64_t* rows, double* out) const {
  check_rows(n, rows);
  for (int64_t i = 0; i < n; ++i) out[i] = priorities()[rows[i]];
}

void ReplayBuffer::gather(int64_t n, const int64_t* rows, float* obs, float* action,
                          float* reward, float* next_obs, float* done) const {
  check_rows(n, rows);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows[i];
    std::memcpy(obs + i * obs_dim_, obs_.get() + r * obs_dim_, sizeof(float) * obs_dim_);
    std::memcpy(action + i * act_dim_, action_.get() + r * act_dim_, sizeof(float) * act_dim_);
    reward[i] = reward_.get()[r];
    std::memcpy(next_obs + i * obs_dim_, next_obs_.get() + r * obs_dim_,
                sizeof(float) * obs_dim_);
    done[i] = done_.get()[r];
  }
}

std::string ReplayBuffer::rng_state() const {
  std::ostringstream out;
  out << rng_;
  return out.str();
}

void ReplayBuffer::load_state(int64_t size, int64_t next_index, double max_priority,
                              const float* obs, const float* action, const float* reward,
                              const float* next_obs, const float* done, const double* priorities,
                              const std::string& rng_state) {
  if (size < 0 || size > capacity_) {
    throw std::invalid_argument("state size must be in [0, " + std::to_string(capacity_) +
                                "], got " + std::to_string(size));
  }
  const bool wrapped = ring_ && size == capacity_;
  const bool next_ok = wrapped ? (next_index >= 0 && next_index < capacity_) : next_index == size;
  if (!next_ok) {
    throw std::invalid_argument("state next_index " + std::to_string(next_index) +
                                " does not fit size " + std::to_string(size) + " (ring=" +
                                (ring_ ? "True" : "False") + ")");
  }
  if (!std::isfinite(max_priority) || max_priority < 1.0) {
    throw std::invalid_argument("state max_priority must be finite and >= 1, got " +
                                std::to_string(max_priority));
  }
  for (int64_t i = 0; i < size; ++i) {
    check_priority(priorities[i], "state priority");
    if (priorities[i] > max_priority) {
      throw std::invalid_argument("state priority at row " + std::to_string(i) +
                                  " exceeds max_priority");
    }
  }
  check_done(size, done);
  std::mt19937_64 rng;
  std::istringstream in(rng_state);
  in >> rng;
  // Reading the last number may already hit the end; only whitespace may follow it.
  if (in.fail() || !(in >> std::ws).eof()) {
    throw std::invalid_argument("state rng_state is not a std::mt19937_64 state");
  }

  // Rows beyond `size` are zeroed so the loaded buffer equals a freshly filled one.
  auto copy_rows = [&](float* dst, const float* src, int64_t width) {
    std::memcpy(dst, src, sizeof(float) * size * width);
    std::memset(dst + size * width, 0, sizeof(float) * (capacity_ - size) * width);
  };
  copy_rows(obs_.get(), obs, obs_dim_);
  copy_rows(action_.get(), action, act_dim_);
  copy_rows(reward_.get(), reward, 1);
  copy_rows(next_obs_.get(), next_obs, obs_dim_);
  copy_rows(done_.get(), done, 1);
  double* leaf = leaves();
  std::fill(leaf, tree_.get() + level_offset_.back(), 0.0);
  std::copy(priorities, priorities + size, leaf);
  rebuild(0, capacity_);

  size_ = size;
  next_ = next_index;
  max_priority_ = max_priority;
  rng_ = rng;
}

}  // namespace opt_fast
