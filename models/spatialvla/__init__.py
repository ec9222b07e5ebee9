"""A SpatialVLA-shaped student on current transformers classes (SigLIP + projector + Gemma2).

Layout follows LeRobot's one-folder-per-policy convention: configuration, modeling, processing and the
action tokenizer each in their own module. Sub-module names match SpatialVLA's checkpoint prefixes
(`vision_tower`, `multi_modal_projector.linear`, `language_model`, `spatial_embed_tokens`).
"""
