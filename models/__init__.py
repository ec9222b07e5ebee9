"""Models: the SpatialVLA-shaped student, the ReFineVLA objective, teachers, and policy adapters.

May import `data/`; heavy libraries (torch, transformers, google-genai) are imported by the modules
that need them, and this package's `__init__` imports none of them.
"""
