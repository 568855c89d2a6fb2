"""Inline edge inspection daemon: AOI frames in, Triton inference, calibrated defect events out."""

__version__ = "0.1.0"
