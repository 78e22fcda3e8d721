"""The ``s12mae`` command line: simulate, pair, shards, stats, pretrain, evaluate, table, demo, info, import-mae.

Every option comes from the typed configs (``s12mae.config``); ``--config file.yaml`` reads a
recipe and later flags override it; unknown keys are errors that name the key.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from s12mae.config import PretrainConfig
from s12mae.simulate import SimulationConfig

__all__ = ["main", "pretrain_parser"]


def pretrain_parser() -> ArgumentParser:
    """Parser of a pretraining run (all of ``PretrainConfig``, plus ``--config``/``--resume``)."""
    p = ArgumentParser(description="Pretrain an encoder (MAE and the methods that build on it).")
    p.add_argument("--config", action=ActionConfigFile, help="YAML recipe (see configs/)")
    p.add_class_arguments(PretrainConfig, None)
    p.add_argument("--resume", type=bool, default=False,
                   help="continue train.out_dir from its latest checkpoint")
    return p


def config_from_namespace(parser: ArgumentParser, ns: object) -> PretrainConfig:
    """Build the typed config from parsed arguments (validation runs in __post_init__)."""
    init = parser.instantiate(ns)
    return PretrainConfig(method=init.method, model=init.model, data=init.data, optim=init.optim,
                          schedule=init.schedule, train=init.train)


def _parser() -> ArgumentParser:
    root = ArgumentParser(prog="s12mae", description=__doc__.splitlines()[0])
    sub = root.add_subcommands(dest="command")

    sim = ArgumentParser(description="Write a simulated S1/S2 dataset (land cover, clouds, speckle, labels).")
    sim.add_argument("--out", type=str, required=True, help="dataset folder to create")
    sim.add_class_arguments(SimulationConfig, "sim")
    sim.add_argument("--overwrite", type=bool, default=False)
    sub.add_subcommand("simulate", sim)

    from s12mae.pairing import pair_cli
    from s12mae.shards import ShardConfig

    pair = ArgumentParser(description="Pair each S2 item with the closest S1 item of the same place within 7 days.")
    pair.add_function_arguments(pair_cli, as_positional=True)
    sub.add_subcommand("pair", pair)

    shards = ArgumentParser(description="Write WebDataset shards of chips (one shard set per folder).")
    shards.add_argument("--data", type=str, required=True, help="dataset (folder or index) in --layout")
    shards.add_argument("--out", type=str, required=True, help="shard-set folder")
    shards.add_argument("--layout", type=str, default="simulated",
                        help="simulated, terramesh, sen1floods11, bigearthnet-v1, bigearthnet-v2, generic, pairs, s2-all")
    shards.add_class_arguments(ShardConfig, "shards")
    shards.add_argument("--skip_bad", type=bool, default=False, help="skip (count and log) unreadable samples")
    shards.add_argument("--overwrite", type=bool, default=False)
    sub.add_subcommand("shards", shards)

    sub.add_subcommand("pretrain", pretrain_parser())

    from s12mae.evaluation import evaluate, table

    ev = ArgumentParser(description="Train a new head on a pretrained encoder (frozen or finetuned) and score it.")
    ev.add_function_arguments(evaluate)
    sub.add_subcommand("evaluate", ev)
    tab = ArgumentParser(description="Table 2: methods x scenarios x tasks x seeds, mean +- std, Markdown and CSV.")
    tab.add_function_arguments(table)
    sub.add_subcommand("table", tab)

    demo = ArgumentParser(description="Simulate data and pretrain every method on CPU in minutes (a smoke check).")
    demo.add_argument("--out", type=str, default="runs/demo", help="run folder")
    demo.add_argument("--steps", type=int, default=None, help="pretraining steps per method (default: the recipe's)")
    demo.add_argument("--num_samples", type=int, default=None, help="simulated scenes (default: the recipe's)")
    demo.add_argument("--eval_steps", type=int, default=None, help="head-training steps per task (default 60)")
    sub.add_subcommand("demo", demo)

    stats = ArgumentParser(description="Per-band mean/std of a dataset in model units, for the sensor specs.")
    stats.add_argument("--data", type=str, required=True, help="dataset folder")
    stats.add_argument("--out", type=str, required=True, help="statistics file to write or update")
    stats.add_argument("--sensors", type=list[str] | None, default=None, help="sensor keys (default: all present)")
    stats.add_argument("--layout", type=str | None, default=None,
                       help="reader layout of --data (default: a simulated folder or a shard set, detected)")
    sub.add_subcommand("stats", stats)

    info = ArgumentParser(description="Sensors, encoder and decoder variants with parameter counts.")
    info.add_argument("--img_size", type=int, default=224)
    info.add_argument("--channels", type=int, default=13, help="input channels for the counts")
    sub.add_subcommand("info", info)

    imp = ArgumentParser(description="Import a facebookresearch/mae or SSL4EO-S12 MAE checkpoint.")
    imp.add_argument("checkpoint", type=str, help=".pth file holding {'model': state_dict}")
    imp.add_argument("--out", type=str, required=True, help="folder for mae.safetensors and encoder.safetensors")
    imp.add_argument("--encoder", type=str, default="vit_base_patch16")
    imp.add_argument("--decoder", type=str, default="vitlite_512d8b")
    imp.add_argument("--img_size", type=int, default=224)
    imp.add_argument("--sensor", type=str, default="s2_l1c")
    sub.add_subcommand("import-mae", imp)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s12mae``; returns the exit code."""
    parser = _parser()
    ns = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    cmd = ns.command
    args = ns[cmd]
    try:
        if cmd == "simulate":
            from s12mae.simulate import write_simulated

            init = parser._subcommands_action._name_parser_map["simulate"].instantiate(args)
            path = write_simulated(args.out, init.sim, overwrite=args.overwrite)
            print(f"wrote {init.sim.num_samples} simulated scenes to {path}")
        elif cmd == "pair":
            from s12mae.pairing import pair_cli

            pair_cli(**{k: v for k, v in vars(args).items() if k != "__path__"})
        elif cmd == "shards":
            from s12mae.shards import shards_cli

            init = parser._subcommands_action._name_parser_map["shards"].instantiate(args)
            shards_cli(args.data, args.out, init.shards, args.layout, args.skip_bad, args.overwrite)
        elif cmd == "pretrain":
            from s12mae.train.loop import pretrain

            sub = parser._subcommands_action._name_parser_map["pretrain"]
            result = pretrain(config_from_namespace(sub, args), resume=args.resume)
            print(f"run folder: {result.run_dir}")
        elif cmd in ("evaluate", "table"):
            from s12mae.evaluation import evaluate, table

            init = parser._subcommands_action._name_parser_map[cmd].instantiate(args)
            fn = evaluate if cmd == "evaluate" else table
            fn(**{k: v for k, v in vars(init).items() if k != "__path__"})
        elif cmd == "demo":
            from s12mae.demo import run_demo

            run_demo(Path(args.out), steps=args.steps, num_samples=args.num_samples, eval_steps=args.eval_steps)
        elif cmd == "stats":
            from s12mae.stats import compute_stats_file

            compute_stats_file(args.data, args.out, args.sensors, layout=args.layout)
        elif cmd == "info":
            from s12mae.info import print_info

            print_info(args.img_size, args.channels)
        elif cmd == "import-mae":
            from s12mae.checkpoint_import import import_mae_cli

            import_mae_cli(args.checkpoint, Path(args.out), args.encoder, args.decoder, args.img_size, args.sensor)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"s12mae {cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
