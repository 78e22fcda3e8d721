"""The ``s12mae`` command line, generated from the typed configs.

Each subcommand is one :class:`Command` in :data:`COMMANDS`: a name, a one-line description, the
config dataclass whose fields become its options (``--help`` shows each field's docstring) and
the entry function that receives the built config. Adding a subcommand is one entry there.
``--config file.yaml`` (where offered) reads the same fields from YAML and later flags override
it; an unknown key is an error naming the key, and a key that has moved is an error naming its
new place.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from s12mae.cli import commands as c
from s12mae.config import MOVED_KEYS, PretrainConfig, check_moved_keys
from s12mae.evaluation import EvalConfig, RobustnessConfig, TableConfig, robustness, table
from s12mae.export import ExportConfig, export_encoder
from s12mae.inference.embed import EmbedConfig, embed_scene
from s12mae.inference.predict import PredictConfig, predict_scene

__all__ = ["COMMANDS", "Command", "build_parser", "config_from_namespace", "main", "pretrain_parser"]


@dataclass(frozen=True)
class Command:
    """A subcommand of ``s12mae``."""

    name: str
    """What the user types, e.g. ``pretrain``."""
    help: str
    """One line for ``s12mae --help``."""
    config: type | Callable[..., Any]
    """Config dataclass of the options; or a function with typed keyword arguments, which is then
    the entry itself."""
    run: Callable[[Any], Any] | None = None
    """Entry function, called with the built config (``None``: ``config`` is the entry)."""
    positional: tuple[str, ...] = ()
    """Fields given without their ``--name`` (required ones, in this order)."""
    config_file: bool = False
    """Offer ``--config file.yaml``."""
    moved_keys: Mapping[str, str] = field(default_factory=dict)
    """Old keys -> their new place; given in a file or a flag they are an error naming it."""


COMMANDS: dict[str, Command] = {cmd.name: cmd for cmd in (
    Command("simulate", "Write a simulated S1/S2 dataset (land cover, clouds, speckle, labels).",
            c.SimulateCommand, c.simulate, config_file=True),
    Command("pair", "Pair each S2 item with the closest S1 item of the same place within 7 days.",
            c.PairCommand, c.pair, positional=("s2",)),
    Command("shards", "Write WebDataset shards of chips (one shard set per folder).",
            c.ShardsCommand, c.shards, config_file=True),
    Command("stats", "Per-band mean/std of a dataset in model units, for the sensor specs.",
            c.StatsCommand, c.stats),
    Command("pretrain", "Pretrain an encoder with one of the registered methods (MAE, AuxMAE, MixMAE).",
            c.PretrainRun, c.pretrain, config_file=True, moved_keys=MOVED_KEYS),
    Command("evaluate", "Train a new head on a pretrained encoder (frozen or finetuned) and score it.",
            EvalConfig, c.evaluate, config_file=True),
    Command("table", "Table 2: methods x scenarios x tasks x seeds, mean +- std, Markdown and CSV.",
            TableConfig, table, config_file=True),
    Command("robustness", "Encoders under S2-only / S1-only / both inputs, S1 shifts and clouds: table and plots.",
            RobustnessConfig, robustness, config_file=True),
    Command("export", "Export an encoder for timm, the Hugging Face Hub or PANGAEA (weights, config, model card).",
            ExportConfig, export_encoder, config_file=True),
    Command("embed", "Patch embeddings of a whole scene (GeoTIFF, Zarr, or one vector per tile to Parquet).",
            EmbedConfig, embed_scene, positional=("scene",), config_file=True),
    Command("predict", "Apply a trained evaluation head to a whole scene (water mask, class probabilities).",
            PredictConfig, predict_scene, positional=("scene",), config_file=True),
    Command("demo", "Simulate data and pretrain every method on CPU in minutes (a smoke check).",
            c.DemoCommand, c.demo),
    Command("info", "Sensors, encoder and decoder variants with parameter counts.", c.InfoCommand, c.info),
    Command("import-mae", "Import a facebookresearch/mae or SSL4EO-S12 MAE checkpoint.",
            c.ImportMaeCommand, c.import_mae, positional=("checkpoint",)),
)}
"""Every subcommand, in the order ``s12mae --help`` lists them."""


def build_parser(cmd: Command) -> ArgumentParser:
    """The parser of one subcommand, generated from its config."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings in --help
    parser = ArgumentParser(description=cmd.help)
    if cmd.config_file:
        parser.add_argument("--config", action=ActionConfigFile, help="YAML file of these options; later flags override it")
    if not is_dataclass(cmd.config):
        parser.add_function_arguments(cmd.config, None)
        return parser
    if cmd.positional:
        given = {f.name: f for f in fields(cmd.config)}
        required = [n for n in cmd.positional if given[n].default is MISSING and given[n].default_factory is MISSING]
        parser.add_class_arguments(cmd.config, None, as_group=False, as_positional=True,
                                   skip=set(given) - set(required))
        hints = get_type_hints(cmd.config)
        for name in cmd.positional:  # an optional positional (``s12mae pair [s2] | --stac URL``)
            if name not in required:
                parser.add_argument(name, nargs="?", type=hints[name], default=given[name].default,
                                    help=f"{name}, optional here (the field {name} of {cmd.config.__name__})")
    parser.add_class_arguments(cmd.config, None, skip=set(cmd.positional))
    for section, cls in _sections(cmd.config):
        parser.add_argument(f"--{section}.help", action=_SectionHelp, section=section, cls=cls,
                            help=f"Show the options of {section} with their descriptions and exit.")
    return parser


def _sections(config: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """``(dotted name, dataclass)`` of every nested config section, e.g. ``("model.mix", MixConfig)``."""
    hints = typing.get_type_hints(config)
    for f in fields(config):
        cls = hints.get(f.name)
        if isinstance(cls, type) and is_dataclass(cls):
            yield f"{prefix}{f.name}", cls
            yield from _sections(cls, f"{prefix}{f.name}.")


class _SectionHelp(argparse.Action):
    """``--data.help``: the options of one section with their field docstrings."""

    def __init__(self, option_strings: list[str], dest: str, section: str = "", cls: type | None = None,
                 **kwargs: Any) -> None:
        self.section, self.cls = section, cls
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        sub = ArgumentParser(prog=f"{parser.prog} --{self.section}.*", description=(self.cls.__doc__ or "").strip())
        sub.add_class_arguments(self.cls, self.section)
        sub.print_help()
        parser.exit()


def _config(cmd: Command, init: Namespace) -> Any:
    """The command's config from instantiated arguments (validation runs in ``__post_init__``),
    or the function's keyword arguments."""
    if not is_dataclass(cmd.config):
        return {k: v for k, v in vars(init).items() if k not in ("config", "__path__")}
    return cmd.config(**{f.name: init[f.name] for f in fields(cmd.config)})


def pretrain_parser() -> ArgumentParser:
    """Parser of a pretraining run (all of ``PretrainConfig``, plus ``--config``/``--resume``)."""
    return build_parser(COMMANDS["pretrain"])


def config_from_namespace(parser: ArgumentParser, ns: Namespace) -> PretrainConfig:
    """The run config of parsed ``pretrain`` arguments (``--resume`` left out)."""
    return _config(COMMANDS["pretrain"], parser.instantiate(ns)).run_config()


def _check_moved(args: Sequence[str], moved: Mapping[str, str]) -> None:
    """One error naming the new place of each moved key given as a flag or in a YAML file."""
    by_source: dict[str, list[str]] = {}
    for key, source in _given_keys(args, moved):
        by_source.setdefault(source, []).append(key)
    for source, keys in by_source.items():
        check_moved_keys(keys, source)


def _given_keys(args: Sequence[str], moved: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """(dotted key, where it came from) of every flag and of the YAML given to ``--config`` or to a
    section (``--model file.yaml``) whose keys ``moved`` may hold."""
    sections = {old.rsplit(".", 1)[0] for old in moved}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, _, value = arg[2:].partition("=")
        yield name, "the command line"
        if name != "config" and name not in sections:
            continue
        value = value or (args[i + 1] if i + 1 < len(args) else "")
        try:  # a file, or YAML given inline
            is_file = Path(value).is_file()
            data = yaml.safe_load(Path(value).read_text() if is_file else value)
        except (OSError, yaml.YAMLError):  # jsonargparse reports unreadable files
            continue
        prefix = "" if name == "config" else name + "."
        for key in _dotted(data, prefix):
            yield key, value if is_file else "the command line"


def _dotted(data: Any, prefix: str = "") -> Iterator[str]:
    """Every key of nested mappings as a dotted path (``model``, ``model.mix_lambda``, ...)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield f"{prefix}{key}"
            yield from _dotted(value, f"{prefix}{key}.")


def _root_parser() -> ArgumentParser:
    root = ArgumentParser(prog="s12mae", description="Self-supervised pretraining of Sentinel-1/2 encoders "
                          "(MAE, AuxMAE, MixMAE): data, pretraining, evaluation.")
    sub = root.add_subcommands(dest="command")
    for cmd in COMMANDS.values():
        sub.add_subcommand(cmd.name, build_parser(cmd), help=cmd.help)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s12mae``; returns the exit code."""
    args = list(argv) if argv is not None else sys.argv[1:]
    root = _root_parser()
    cmd = COMMANDS.get(args[0]) if args else None
    try:
        if cmd is not None and cmd.moved_keys:
            _check_moved(args[1:], cmd.moved_keys)
        ns = root.parse_args(args)  # exits with a message on a bad or unknown option
        cmd = COMMANDS[ns.command]
        cfg = _config(cmd, root.instantiate(ns)[cmd.name])
        if cmd.run is None:  # a typed function: the config is its keyword arguments
            cmd.config(**cfg)
        else:
            cmd.run(cfg)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"s12mae {cmd.name if cmd else ''}: error: {err}", file=sys.stderr)
        return 2
    return 0
