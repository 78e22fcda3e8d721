"""Hugging Face Hub: s12mae encoders with ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub``.

:class:`S12MAEEncoder` is a :class:`~s12mae.models.vit.ViTEncoder` with huggingface_hub's
``ModelHubMixin``: its files are the export folder of :mod:`s12mae.export.folder` (timm's Hub
layout + model card), so one repository serves timm (``hf-hub:user/repo``), huggingface_hub and
s12mae alike. Needs the ``[hub]`` extra (``huggingface_hub``; timm installs it too).

Example:
    >>> enc = S12MAEEncoder.from_pretrained("exports/mae_s2", bands=["B01", ..., "B12"])
    >>> enc.save_pretrained("copy")            # the same layout again
    >>> enc.push_to_hub("user/s12mae-mae-s2")  # needs a login
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin, snapshot_download

from s12mae.export.encoder_file import EncoderInfo, SensorInfo, check_inputs
from s12mae.export.folder import CARD, CONFIG, WEIGHTS, push_folder, read_folder, write_folder
from s12mae.models.vit import ViTEncoder

__all__ = ["S12MAEEncoder", "push_folder"]


class S12MAEEncoder(ViTEncoder, ModelHubMixin, library_name="timm", tags=["s12mae", "remote-sensing"],
                    license="apache-2.0", pipeline_tag="image-feature-extraction"):
    """A one-sensor s12mae encoder that knows what it expects (:attr:`info`, :attr:`sensor_info`).

    Build it with :meth:`from_pretrained` (an export folder or a Hub repo id) or
    :meth:`from_encoder`; the constructor is :class:`ViTEncoder`'s.
    """

    info: EncoderInfo
    sensor_info: SensorInfo

    @classmethod
    def from_encoder(cls, encoder: ViTEncoder, info: EncoderInfo, sensor: str | None = None) -> S12MAEEncoder:
        """A hub encoder with the weights of ``encoder``'s patch embedding ``sensor`` (default: its first)."""
        s = info.sensor(sensor)
        out = cls({s.key: len(s.bands)}, img_size=info.img_size, patch_size=info.patch_size,
                  embed_dim=info.embed_dim, depth=info.depth, num_heads=info.num_heads, mlp_ratio=info.mlp_ratio)
        state = {k: v for k, v in encoder.state_dict().items()
                 if not k.startswith("patch_embed.") or k.startswith(f"patch_embed.{s.key}.")}
        out.load_state_dict(state)
        out.info, out.sensor_info = info, s
        return out.eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        write_folder(self, self.info, self.sensor_info.key, Path(save_directory))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         bands: list[str] | None = None, units: str | None = None,
                         **model_kwargs: Any) -> S12MAEEncoder:
        """Load an export folder (local, or a Hub snapshot); ``bands``/``units``, when given, must
        match the encoder's (design note 18: an error names both lists)."""
        if os.path.isdir(model_id):
            folder = model_id
        else:
            folder = snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, local_files_only=local_files_only,
                                       token=token, allow_patterns=[WEIGHTS, CONFIG, CARD])
        encoder, info, sensor = read_folder(folder)
        check_inputs(sensor, bands, units, where=str(model_id))
        return cls.from_encoder(encoder, info, sensor.key)


