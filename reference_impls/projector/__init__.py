"""Projector-side visual-token compressors: learned modules that map many vision-encoder
features to fewer language-model tokens (resamplers, abstractors, pixel shuffle).
"""
