"""Print where the nanobind PyPI package keeps its headers, sources and stub generator, so it builds offline."""

import os

import nanobind

print(nanobind.include_dir())
print(nanobind.source_dir())
print(os.path.join(os.path.dirname(nanobind.include_dir()), "ext", "robin_map", "include"))
print(os.path.join(os.path.dirname(nanobind.__file__), "stubgen.py"))
