"""Pretrained-weight presets: names, where to get them, and checks of local copies."""
