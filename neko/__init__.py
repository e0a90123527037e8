"""neko: generative post-recognition error correction with task-guided Mixture-of-Experts LMs."""

import warnings

__version__ = "0.1.0"

# An up-cycled Qwen2-MoE disables its shared expert by giving it zero width (neko.model.upcycle), so
# building that model (every load of a neko checkpoint) makes torch's initializers warn
# "Initializing zero-element tensors is a no-op" once per process. That is exactly what is meant
# here, so this one message is silenced; appended, so a user's own -W / PYTHONWARNINGS still wins.
warnings.filterwarnings(
    "ignore", message="Initializing zero-element tensors is a no-op", category=UserWarning, append=True
)
