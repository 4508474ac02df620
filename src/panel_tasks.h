#pragma once
// How the panel GEMM (matmul_panels.cpp) and the other products by columns (matmul_tiles.cpp,
// matmul_weight_tiles.cpp) divide their output among threads: plain arithmetic, kept apart so
// that the division is tested on its own.

#include "kernels/kernels.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace qlgrad::math {

// Rows run against a depth block's panels at once: their slice of lhs stays in L2 (144 KiB at the
// depth of the division by columns, 256; 576 KiB at that of the shared panels, 1024).
constexpr int64_t kRowBlock = 144;

// One task: the sums of a kernel's rows (kKernelRows, or more for AMX tiles) by one panel (fewer
// at the last rows and columns).
struct PanelTask {
  int64_t row, rows, column, columns;
};

// The output [rows, columns] as tasks of `task_rows` rows by kPanelColumns columns, all of
// them equal but at the last rows and columns, so that any number of threads taking runs of
// consecutive tasks (as at::parallel_for hands them out) get equal shares to within one task:
// ceil(rows / task_rows) * ceil(columns / 32) tasks, 528 for 256 x 768 in tasks of 12 rows. In the order a single
// thread would run them: by chunks of `chunk_columns` (a multiple of kPanelColumns, a thread's
// share of the columns where the threads divide them evenly, so that a thread mostly reads the
// panels it converted itself), then by blocks of kRowBlock rows, then panel by panel (each panel
// stays in L2 while the block's rows run against it: the first block's rows meet it right after
// its conversion).
class PanelTasks {
 public:
  PanelTasks(int64_t rows, int64_t columns, int64_t chunk_columns, int64_t task_rows = kKernelRows)
      : rows_(rows),
        columns_(columns),
        task_rows_(task_rows),
        groups_per_block_(std::max<int64_t>(1, kRowBlock / task_rows)),
        row_groups_((rows + task_rows - 1) / task_rows),
        panels_((columns + kPanelColumns - 1) / kPanelColumns),
        chunk_panels_(chunk_columns / kPanelColumns) {}

  int64_t size() const { return row_groups_ * panels_; }

  PanelTask operator[](int64_t index) const {
    // Every chunk but the last has chunk_panels_ panels, every row block but the last
    // groups_per_block_ groups of task rows.
    const int64_t chunk = index / (chunk_panels_ * row_groups_);
    const int64_t panels_in_chunk = std::min(chunk_panels_, panels_ - chunk * chunk_panels_);
    const int64_t in_chunk = index - chunk * chunk_panels_ * row_groups_;
    const int64_t block = in_chunk / (panels_in_chunk * groups_per_block_);
    const int64_t groups_in_block = std::min(groups_per_block_, row_groups_ - block * groups_per_block_);
    const int64_t in_block = in_chunk - block * panels_in_chunk * groups_per_block_;
    const int64_t panel = chunk * chunk_panels_ + in_block / groups_in_block;
    const int64_t row = (block * groups_per_block_ + in_block % groups_in_block) * task_rows_;
    const int64_t column = panel * kPanelColumns;
    return {row, std::min(task_rows_, rows_ - row), column, std::min(kPanelColumns, columns_ - column)};
  }

 private:
  int64_t rows_, columns_, task_rows_, groups_per_block_, row_groups_, panels_, chunk_panels_;
};

// Pieces of work (the conversion of a few of the panels a depth block shares) each done once, by
// the first thread that needs it, before any thread goes on past it: a thread that finds it being
// done by another waits. Pieces are claimed one at a time and done right away, so no thread waits
// for a piece while holding another one undone.
class OnceEachPiece {
 public:
  explicit OnceEachPiece(int64_t pieces) : states_(pieces) {}

  // Every piece undone again, between the parallel regions that use them.
  void reset() {
    for (auto& state : states_) {
      state.store(kUndone, std::memory_order_relaxed);
    }
  }

  // Returns once `piece` is done, having run work() if no thread had claimed it.
  template <typename Work>
  void ensure(int64_t piece, const Work& work) {
    std::atomic<uint8_t>& state = states_[piece];
    if (state.load(std::memory_order_acquire) == kDone) {
      return;
    }
    uint8_t undone = kUndone;
    if (state.compare_exchange_strong(undone, kClaimed, std::memory_order_acquire)) {
      work();
      state.store(kDone, std::memory_order_release);
      return;
    }
    while (state.load(std::memory_order_acquire) != kDone) {
      std::this_thread::yield();
    }
  }

 private:
  static constexpr uint8_t kUndone = 0, kClaimed = 1, kDone = 2;
  std::vector<std::atomic<uint8_t>> states_;
};

// `columns` divided into tasks of at most `widest` columns (a multiple of `multiple`), as many
// tasks as a multiple of `threads`, which start at multiples of `multiple` near equal steps:
// the output is often only a few tile widths wide, and 3 tasks on 2 threads take as long as 4.
// Threads taking runs of consecutive tasks (as at::parallel_for hands them out) then take as many
// columns as each other to within `multiple`: tasks of one width, which rounding it up to the
// multiple makes fewer, gave one of 2 threads 5% more columns than the other at 4864 columns in
// tasks of up to 256 or 512. The starts are rounded up (piece_start rounds down, which would
// leave the first task empty where the columns are fewer than the tasks' multiples), and there
// are fewer tasks where the columns are too few for each to have some.
class ColumnTasks {
 public:
  ColumnTasks(int64_t columns, int64_t widest, int64_t multiple, int64_t threads) : multiple_(multiple) {
    const int64_t tasks = threads * ((columns + threads * widest - 1) / (threads * widest));
    starts_.push_back(0);
    for (int64_t task = 1; task <= tasks; ++task) {
      const int64_t start = std::min(columns, round_up((task * columns + tasks - 1) / tasks, multiple));
      if (start > starts_.back()) {
        starts_.push_back(start);
      }
    }
  }

  int64_t size() const { return static_cast<int64_t>(starts_.size()) - 1; }
  // Task `task`'s first column (`size()`: the end of the last).
  int64_t first(int64_t task) const { return starts_[task]; }
  int64_t width(int64_t task) const { return starts_[task + 1] - starts_[task]; }
  // The widest task's columns, rounded up to the multiple (a buffer for any task's whole panels).
  int64_t widest() const {
    int64_t widest = 0;
    for (int64_t task = 0; task < size(); ++task) {
      widest = std::max(widest, width(task));
    }
    return round_up(widest, multiple_);
  }

 private:
  int64_t multiple_;
  std::vector<int64_t> starts_;
};

} // namespace qlgrad::math
