"""divot-llm: train unified video comprehension + generation LLMs in the style of Divot-LLM.

Importing the package is cheap and never imports torchvision: on CPU-only machines the
only torchvision wheel is a CUDA build whose import breaks transformers and diffusers.
If such a torchvision is installed, the shim below makes it importable first.
"""

from divot_llm._compat import torchvision_shim

torchvision_shim.apply()

__version__ = "0.1.0"
