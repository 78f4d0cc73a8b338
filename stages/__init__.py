"""One thin script per DVC stage; each reads its params section and calls `pipeline`.

Importing `pipeline` first pins the SIMD level of torch and OpenCV (pipeline.core.cpu_isa) before a stage loads them.
Patent references ([0025], claim 12, Table 1) are to US 2018/0373985 A1.
"""
import pipeline  # noqa: F401  (pins the SIMD level: pipeline.core.cpu_isa)
