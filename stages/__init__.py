"""One thin script per DVC stage; each reads its params section and calls `pipeline`.

Patent references ([0025], claim 12, Table 1) are to US 2018/0373985 A1.
"""
