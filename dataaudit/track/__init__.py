"""Capture during training: the DataLoader wrapper, per-batch statistics, input sketches, optimizer hooks."""
from dataaudit.track.tracker import Tracker

__all__ = ["Tracker"]
