"""Sweeps: file → trial list → Ray Tune driver + Ray Train workers."""
