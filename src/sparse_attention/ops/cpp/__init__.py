"""Shared C++: headers used by several ops (``include/``) and the per-op, per-ISA build (``build.py``)."""
