"""neko: generative post-recognition error correction with task-guided Mixture-of-Experts LMs."""

__version__ = "0.1.0"
