"""Export and load pretrained encoders.

* :mod:`~s12mae.export.encoder_file`: the run's ``encoder.safetensors`` (weights + self-description);
* :mod:`~s12mae.export.folder`: timm's Hub layout, also a Hugging Face model repository;
* :mod:`~s12mae.export.card`: the model card written from the run;
* :mod:`~s12mae.export.run`: ``s12mae export`` (:class:`ExportConfig`, :func:`export_encoder`).
"""

from s12mae.export.encoder_file import (
    EncoderInfo,
    SensorInfo,
    check_inputs,
    encoder_info,
    encoder_stats,
    load_encoder,
    read_encoder,
    save_encoder,
)
from s12mae.export.folder import load_any_encoder, read_folder, write_folder
from s12mae.export.run import ExportConfig, export_encoder

__all__ = [
    "EncoderInfo",
    "ExportConfig",
    "SensorInfo",
    "check_inputs",
    "encoder_info",
    "encoder_stats",
    "export_encoder",
    "load_any_encoder",
    "load_encoder",
    "read_encoder",
    "read_folder",
    "save_encoder",
    "write_folder",
]

