"""``s12mae export``: an encoder file to a timm / Hugging Face / PANGAEA folder, by a typed config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from s12mae.export.encoder_file import encoder_info, load_encoder
from s12mae.export.folder import write_folder
from s12mae.files import atomic_dir

__all__ = ["FORMATS", "ExportConfig", "export_encoder"]

FORMATS = ("timm", "hf", "pangaea")


@dataclass
class ExportConfig:
    """Export a pretrained encoder for use outside s12mae."""

    checkpoint: str
    """The encoder file of a run (``RUN/encoder.safetensors``) or of ``s12mae import-mae``."""
    out: str
    """Folder to create. One sensor: the folder itself is the export; ``sensor=all``: one sub-folder
    per sensor (``OUT/s2_l1c``, ``OUT/s1_grd``)."""
    format: Literal["timm", "hf", "pangaea"] = "timm"
    """``timm``: timm's Hub layout (``model.safetensors``, ``config.json``) with a model card
    (``README.md``), which is also a Hugging Face model repository; ``hf``: the same folder,
    optionally pushed to ``push_to``; ``pangaea``: the same folder plus a PANGAEA encoder config
    ``pangaea_<sensor>.yaml`` for the adapter in ``integrations/pangaea/``."""
    sensor: str | None = None
    """Patch embedding to export (a timm model has one): a sensor key of the encoder, ``all`` for
    every one, or ``None`` for the encoder's first (the command says which went out and which
    others the encoder has)."""
    overwrite: bool = False
    """Replace an existing ``out`` folder (otherwise it is an error)."""
    push_to: str | None = None
    """``hf`` only: also upload the folder to this Hugging Face Hub repository (``user/name``;
    needs ``huggingface_hub`` and a login); with ``sensor=all`` one repository per sensor,
    ``user/name-<sensor>``."""
    quiet: bool = False
    """Print nothing."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: unknown export format {self.format!r}; known: {list(FORMATS)}")
        if not self.checkpoint:
            raise ValueError("checkpoint: give the encoder file to export (RUN/encoder.safetensors)")
        if not self.out:
            raise ValueError("out: give the folder to write")
        if self.push_to is not None and self.format != "hf":
            raise ValueError(f"push_to: only with format 'hf', not {self.format!r}")


def export_encoder(cfg: ExportConfig) -> list[Path]:
    """Write the export folder(s) of ``cfg`` all at once (nothing is left behind on an error).

    Returns:
        The folder of each exported sensor.

    Raises:
        ValueError: the checkpoint is not an encoder file, or lacks the requested sensor (the
            message lists the sensors it has).
        FileExistsError: ``out`` exists and ``overwrite`` is off.
    """
    info = encoder_info(cfg.checkpoint)
    keys = list(info.sensors) if cfg.sensor == "all" else [info.sensor(cfg.sensor).key]
    encoder = load_encoder(cfg.checkpoint).eval()
    out = Path(cfg.out)
    nested = cfg.sensor == "all"
    folders = [out / k if nested else out for k in keys]
    with atomic_dir(out, replace=cfg.overwrite) as tmp:
        for key, final in zip(keys, folders):
            folder = tmp / key if nested else tmp
            folder.mkdir(exist_ok=True)
            write_folder(encoder, info, key, folder)
            if cfg.format == "pangaea":
                from s12mae.export.pangaea import write_pangaea_config

                write_pangaea_config(info, key, final.resolve(), folder / f"pangaea_{key}.yaml")
    if cfg.push_to:
        from s12mae.export.folder import push_folder

        for folder in folders:
            push_folder(folder, cfg.push_to if not nested else f"{cfg.push_to}-{folder.name}")
    if not cfg.quiet:
        others = [k for k in info.sensors if k not in keys]
        note = f"; the encoder also has {others} (choose with --sensor, or --sensor all)" if others else ""
        print(f"exported the {', '.join(keys)} patch embedding(s) of {cfg.checkpoint} ({cfg.format}) to "
              f"{', '.join(str(f) for f in folders)}{note}")
    return folders
