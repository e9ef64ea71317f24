"""Nucleus instance segmentation pipeline for DSB2018."""

__version__ = "0.1.0"
