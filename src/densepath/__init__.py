"""densepath: SFT, dense reward recovery and Dense-Path REINFORCE."""

__version__ = "0.1.0"
