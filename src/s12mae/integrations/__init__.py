"""s12mae encoders in other frameworks: timm, Hugging Face Hub, TerraTorch, torchgeo.

Each module needs its optional extra (``pip install s12mae[hub]``, ``[terratorch]``, ``[torchgeo]``)
and is imported on its own; nothing here is imported by the rest of s12mae. The PANGAEA adapter is
not a module of the package (PANGAEA is not pip-installable): see ``integrations/pangaea/``.
"""
