// The panel GEMM's division of its output into tasks (src/panel_tasks.h): every output element
// in exactly one task, at least 64 tasks from 256 rows on every shape bench/compare.py
// measures, all of them full-sized but at the last rows and columns, and equal shares, to
// within a few percent, for 2 to 64 threads taking runs of consecutive tasks as
// at::parallel_for hands them out. The division by columns (ColumnTasks): every column in one
// task, none empty or wider than asked, each starting at a multiple, and, where the columns
// allow a multiple of the threads' count of tasks, every thread's columns within one multiple of
// an equal share. Pieces done once (OnceEachPiece): threads racing through the same pieces in
// different orders each find every piece done, with what it wrote, and every piece done by one
// thread only, again after a reset.

#include "testing.h"

#include "panel_tasks.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>
#include <vector>

namespace {

using qlgrad::math::ColumnTasks;
using qlgrad::math::OnceEachPiece;
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

// `threads` threads ensure every one of `pieces` pieces, each from a piece of its own onwards (so
// that they meet on pieces another is doing), in `rounds` rounds with a reset between them; the
// work writes its piece's value, slowly, and counts its runs. Returns whether every thread found
// every piece's value after ensure() and every piece ran once a round.
bool pieces_done_once(int64_t pieces, int64_t threads, int64_t rounds) {
  OnceEachPiece once(pieces);
  std::vector<int64_t> values(pieces), runs(pieces);
  std::atomic<bool> seen_all{true};
  bool once_each = true;
  for (int64_t round = 0; round < rounds; ++round) {
    once.reset();
    std::fill(values.begin(), values.end(), 0);
    std::fill(runs.begin(), runs.end(), 0);
    std::vector<std::thread> workers;
    for (int64_t thread = 0; thread < threads; ++thread) {
      workers.emplace_back([&, thread] {
        for (int64_t step = 0; step < pieces; ++step) {
          const int64_t piece = (thread * pieces / threads + step) % pieces;
          once.ensure(piece, [&] {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
            values[piece] = round * pieces + piece + 1;
            ++runs[piece];
          });
          if (values[piece] != round * pieces + piece + 1) {
            seen_all = false;
          }
        }
      });
    }
    for (auto& worker : workers) {
      worker.join();
    }
    once_each = once_each && std::all_of(runs.begin(), runs.end(), [](int64_t count) { return count == 1; });
  }
  return seen_all && once_each;
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
  // The layers of bench/llm.py's decoder and compare.py's, and odd sizes, in tasks as the
  // products take them (up to 256, 512 and 1024 columns, multiples of 32 or 16).
  for (const int64_t columns : {4864, 896, 128, 3072, 768, 4096, 2050, 300, 100, 70, 48, 40, 16, 1}) {
    for (const int64_t widest : {256, 512, 1024}) {
      for (const int64_t multiple : {32, 16}) {
        for (const int64_t threads : {1, 2, 3, 4, 16}) {
          const ColumnTasks tasks(columns, widest, multiple, threads);
          std::ostringstream name;
          name << columns << " columns in tasks of up to " << widest << " (multiples of " << multiple << ") on "
               << threads << " threads";
          bool whole = tasks.size() > 0 && tasks.first(0) == 0 && tasks.first(tasks.size()) == columns;
          for (int64_t task = 0; task < tasks.size(); ++task) {
            whole = whole && tasks.width(task) > 0 && tasks.width(task) <= widest &&
                    tasks.first(task) % multiple == 0 && tasks.width(task) <= tasks.widest();
          }
          tally.check(name.str() + ": every column once, in tasks starting at multiples", whole);
          if (columns >= threads * multiple) {
            tally.check(name.str() + ": a multiple of the threads' count of tasks", tasks.size() % threads == 0,
                        std::to_string(tasks.size()));
            // Each thread's columns within one multiple of an equal share (the starts are rounded up
            // to multiples, the end is not).
            const int64_t run = tasks.size() / threads;
            bool even = true;
            std::ostringstream shares;
            for (int64_t thread = 0; thread < threads; ++thread) {
              const int64_t taken = tasks.first((thread + 1) * run) - tasks.first(thread * run);
              even = even && std::abs(taken * threads - columns) < multiple * threads;
              shares << taken << " ";
            }
            tally.check(name.str() + ": shares within one multiple of equal", even, shares.str());
          }
        }
      }
    }
  }
  for (const int64_t threads : {2, 4, 8}) {
    tally.check("pieces done once: " + std::to_string(threads) + " threads, 64 pieces, 3 rounds",
                pieces_done_once(64, threads, 3));
  }
  return tally.finish();
}
