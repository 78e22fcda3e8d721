"""TerraTorch custom modules folder: importing it registers the ``s12mae_vit`` backbone.

Point TerraTorch's CLI at this folder (``custom_modules_path: integrations/terratorch/s12mae_modules``
in the YAML, or ``TERRATORCH_CUSTOM_MODULE_PATH``); s12mae must be installed with ``[terratorch]``.
"""

import s12mae.integrations.terratorch  # noqa: F401  (registers the backbone)
