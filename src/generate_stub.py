"""Write the type stub of the built qlgrad._C with nanobind's stub generator.

    python generate_stub.py STUBGEN LIBRARY MODULE OUTPUT

STUBGEN is nanobind's stubgen.py, LIBRARY the built libqlgrad.so, MODULE the built extension,
OUTPUT the .pyi to write. Both are loaded from their build paths, as qlgrad/__init__.py loads
them once installed (the library first: the module's runpath holds for the installed layout
only), so that no installed copy of qlgrad is read.
"""

import importlib.util
import runpy
import sys

import torch

stubgen, library_path, module_path, output = sys.argv[1:]
torch.ops.load_library(library_path)
spec = importlib.util.spec_from_file_location("qlgrad._C", module_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules[spec.name] = module
sys.argv = [stubgen, "-q", "-m", spec.name, "-o", output]
runpy.run_path(stubgen, run_name="__main__")
