"""Glue shared by the DVC stages, in packages that follow the data: core (plumbing), data, training, search, report, serve.
Imports prernn.

Patent references ([0024], claim 12, Table 1, FIG. 2A) are to US 2018/0373985 A1.
"""
from pipeline.core.cpu_isa import pin_isa

pin_isa()  # one SIMD level on every AVX2 machine, before torch or OpenCV compute (pipeline.core.cpu_isa)
