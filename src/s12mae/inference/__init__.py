"""Whole-scene inference: embeddings (``s12mae embed``) and trained heads (``s12mae predict``).

* :mod:`~s12mae.inference.scene`: a scene read window by window through the readers' rules;
* :mod:`~s12mae.inference.tiling`: sliding windows and overlap blending;
* :mod:`~s12mae.inference.outputs`: GeoTIFF / Zarr / GeoParquet outputs, written atomically;
* :mod:`~s12mae.inference.embed`: :class:`EmbedConfig`, :func:`embed_scene`;
* :mod:`~s12mae.evaluation.saved_model`: the trained head of ``s12mae evaluate`` on disk;
* :mod:`~s12mae.inference.predict`: :class:`PredictConfig`, :func:`predict_scene`.
"""
