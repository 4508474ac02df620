// The panel GEMM's division of its output into tasks (src/panel_tasks.h): every output element
// in exactly one task, at least 64 tasks from 256 rows on every shape bench/compare.py
// measures, all of them full-sized but at the last rows and columns, and equal shares, to
// within a few percent, for 2 to 64 threads taking runs of consecutive tasks as
// at::parallel_for hands them out.

#include "testing.h"

#include "panel_tasks.h"

#include <algorithm>
#include <sstream>
#include <vector>

namespace {

using qlgrad::math::PanelTasks;

struct Shape {
  int64_t rows, columns;
  bool measured;  // one of compare.py's: the counts and shares are checked too
};

// The most work one thread gets over the mean, when `threads` take runs of
// ceil(tasks / threads) consecutive tasks (at::parallel_for's OpenMP division).
double largest_share(const PanelTasks& tasks, int64_t rows, int64_t columns, int64_t threads) {
  const int64_t run = (tasks.size() + threads - 1) / threads;
  int64_t largest = 0;
  for (int64_t begin = 0; begin < tasks.size(); begin += run) {
    int64_t work = 0;
    for (int64_t index = begin; index < std::min(tasks.size(), begin + run); ++index) {
      work += tasks[index].rows * tasks[index].columns;
    }
    largest = std::max(largest, work);
  }
  return static_cast<double>(largest) * static_cast<double>(threads) / static_cast<double>(rows * columns);
}

}  // namespace

int main() {
  qlgrad_test::Tally tally;
  // compare.py's shapes from 256 tokens, as the backward's rows x columns (tokens x in_features;
  // 256 x 3072 is the down-projection of its 256x768x3072), and odd sizes, with chunks as the panel GEMM takes them
  // (1024 columns at most).
  const std::vector<Shape> shapes = {{256, 768, true},  {2048, 768, true},  {256, 4096, true},
                                     {256, 3072, true}, {1000, 200, false}, {9, 33, false}};
  // Tasks of the AVX-512 kernel's rows, and of two AMX tiles' (32).
  for (const auto& shape : shapes) {
    for (const int64_t task_rows : {qlgrad::math::kKernelRows, int64_t{32}}) {
      for (const int64_t chunk_columns : {32, 256, 1024}) {
        const PanelTasks tasks(shape.rows, shape.columns, chunk_columns, task_rows);
        std::ostringstream name;
        name << shape.rows << "x" << shape.columns << " in chunks of " << chunk_columns << ", tasks of " << task_rows
             << " rows";
        std::vector<int> covered(shape.rows * shape.columns, 0);
        bool full_inside = true;
        for (int64_t index = 0; index < tasks.size(); ++index) {
          const auto task = tasks[index];
          for (int64_t row = task.row; row < task.row + task.rows; ++row) {
            for (int64_t column = task.column; column < task.column + task.columns; ++column) {
              covered[row * shape.columns + column] += 1;
            }
          }
          const bool at_edge =
              task.row + task_rows >= shape.rows || task.column + qlgrad::math::kPanelColumns >= shape.columns;
          full_inside =
              full_inside && (at_edge || (task.rows == task_rows && task.columns == qlgrad::math::kPanelColumns));
        }
        tally.check(name.str() + ": every element once",
                    std::all_of(covered.begin(), covered.end(), [](int count) { return count == 1; }));
        tally.check(name.str() + ": full tasks but at the edges", full_inside);
        if (shape.measured) {
          tally.check(name.str() + ": at least 64 tasks", tasks.size() >= 64, std::to_string(tasks.size()));
          for (const int64_t threads : {2, 16, 64}) {
            const double share = largest_share(tasks, shape.rows, shape.columns, threads);
            tally.check(name.str() + ", " + std::to_string(threads) + " threads: shares within 15%", share <= 1.15,
                        std::to_string(share));
          }
        }
      }
    }
  }
  return tally.finish();
}
