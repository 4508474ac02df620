"""Print what a C++ build needs from this environment's torch: version, C++ ABI, library dir, include dirs."""

import os

import torch
from torch.utils import cpp_extension

print(torch.__version__)
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(cpp_extension.library_paths()[0])
print(os.pathsep.join(cpp_extension.include_paths()))
