"""Variant cards shipped with asvit-zoo: one folder per variant (config.json, README.md, weights)."""
