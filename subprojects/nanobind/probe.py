"""Print where the nanobind PyPI package keeps its headers and sources, so it builds offline."""
import os

import nanobind

print(nanobind.include_dir())
print(nanobind.source_dir())
print(os.path.join(os.path.dirname(nanobind.include_dir()), "ext", "robin_map", "include"))
