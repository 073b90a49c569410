"""Benchmarks: genq against bare arq and bare Starlette, in the same run."""
