# The one place the vendored llama.cpp is pinned: the llama-cpp-python sdist whose
# vendor/llama.cpp we build, and its sha256 as published on PyPI.
LLAMA_CPP_PYTHON_VERSION := 0.3.36
LLAMA_CPP_PYTHON_SHA256  := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
