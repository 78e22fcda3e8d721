"""The command line, recipes and the demo, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import shared
from s12mae.cli import COMMANDS, config_from_namespace, main, pretrain_parser
from s12mae.demo import demo_config
from s12mae.methods import METHODS
from s12mae.sensors import get_sensor, load_stats

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_recipe_parses_into_a_valid_config(recipe):
    p = pretrain_parser()
    cfg = config_from_namespace(p, p.parse_args(["--config", str(CONFIGS / recipe)]))
    assert cfg.model.img_size % int(cfg.model.encoder.split("patch")[1]) == 0


@pytest.mark.parametrize("method, recipe", [("mae", "demo.yaml"), ("auxmae", "auxmae_demo.yaml"),
                                            ("mixmae", "mixmae_demo.yaml")])
def test_demo_recipe_files_match_the_demo_code(method, recipe):
    p = pretrain_parser()
    from_file = config_from_namespace(p, p.parse_args(["--config", str(CONFIGS / recipe)]))
    assert from_file.to_dict() == demo_config(method).to_dict()


def test_paper_recipe_has_the_papers_numbers():
    raw = yaml.safe_load((CONFIGS / "mae_vitb16_paper.yaml").read_text())
    assert raw["train"]["batch_size"] == 4096 and raw["optim"]["name"] == "adafactor"
    assert raw["model"]["encoder"] == "vit_base_patch16"


def test_unknown_key_and_bad_size_are_errors_that_name_them(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--model.encodr", "vit_nano_patch8"])
    assert "encodr" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  mask_ration: 0.5\n")
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", str(bad)])
    assert "mask_ration" in capsys.readouterr().err
    assert main(["pretrain", "--model.encoder", "vit_nano_patch8", "--model.img_size", "60"]) == 2
    assert "model.img_size: 60 is not divisible by the patch size 8" in capsys.readouterr().err


def test_demo_end_to_end_on_a_tiny_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "--num_samples", "16", "--eval_steps", "2",
                 "--eval_scenes", "12", "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "SMOKE CHECK" in printed and "not results" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert {m: s["steps"] for m, s in summary["methods"].items()} == {"mae": 4, "auxmae": 4, "mixmae": 4}
    pictures = {"mae": ["reconstruction_mae.png"], "auxmae": ["reconstruction_mae.png", "reconstruction_aux.png"],
                "mixmae": ["reconstruction_mix.png"]}
    for method, names in pictures.items():
        run = out / method
        for name in ("config.yaml", "metrics.jsonl", "loss_curve.png", "encoder.safetensors", *names):
            assert (run / name).stat().st_size > 0, name
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["stats"] == str(out / "stats.json")
    table = (out / "table" / "table.md").read_text()
    assert "| Frozen | mae |" in table and "random init" in table and "not results" in table
    assert "Verdict: pretrained encoders beat random init with a frozen head in" in printed
    assert summary["verdict"].startswith("Verdict:")


def test_demo_verdict_counts_wins_beyond_the_spread_and_says_why_when_pretraining_loses():
    from s12mae.demo import pretraining_verdict

    def rows(mae, random):
        return [{"scenario": "frozen", "model": m, "task": "water", "values": v}
                for m, v in (("mae", mae), ("random init", random), ("pixels", [0.9, 0.9]))]

    clear = pretraining_verdict(rows([0.80, 0.82], [0.60, 0.62]))
    assert "in 1 of 1 (method, task) cells" in clear and "Why" not in clear
    assert "mae/water 81.0 vs 61.0 (beats)" in clear
    within_noise = pretraining_verdict(rows([0.70, 0.80], [0.70, 0.72]))  # mean 75 vs 71, stds 7.1 + 1.4
    assert "in 0 of 1" in within_noise and "Why, where they do not" in within_noise


def test_simulate_stats_and_pretrain_commands(tmp_path, capsys):
    data = tmp_path / "sim"
    assert main(["simulate", "--out", str(data), "--sim.num_samples", "8", "--sim.img_size", "32"]) == 0
    assert main(["simulate", "--out", str(data)]) == 2  # refuses to overwrite
    stats = tmp_path / "stats.json"
    assert main(["stats", "--data", str(data), "--out", str(stats)]) == 0
    table = load_stats(stats)
    assert set(table) == {"s2_l1c", "s1_grd"}
    assert -25 < table["s1_grd"]["VV"].mean < 0 and 0 < table["s2_l1c"]["B04"].mean < 0.5
    assert get_sensor("s2_l1c", stats).stats["B04"].mean == table["s2_l1c"]["B04"].mean
    run = tmp_path / "run"
    args = ["pretrain", "--model.encoder", "vit_nano_patch8", "--model.decoder", "vitlite_128d2b",
            "--model.img_size", "32", "--data.path", str(data), "--data.stats", str(stats),
            "--train.steps", "2", "--train.batch_size", "4", "--train.out_dir", str(run)]
    assert main(args) == 0
    parser = pretrain_parser()
    saved = config_from_namespace(parser, parser.parse_args(["--config", str(run / "config.yaml")]))
    assert saved.train.steps == 2 and saved.data.stats == str(stats)  # the run folder's config re-runs it
    assert main(args) == 2  # an existing run is not overwritten without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args[:-6] + ["--train.steps", "3", "--train.batch_size", "4", "--train.out_dir", str(run),
                             "--resume", "true"]) == 0
    changed = args[:-6] + ["--train.steps", "4", "--train.batch_size", "8", "--train.out_dir", str(run)]
    assert main(changed + ["--resume", "true"]) == 2  # a resumed run keeps its config
    assert "train.batch_size: 4 -> 8" in capsys.readouterr().err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_info_prints_variants_with_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "vit_base_patch16" in out and "vitlite_512d6b" in out and "21.02M" in out


def test_pair_shards_and_pretrain_from_shards_commands(tmp_path):
    ssl4eo = shared("ssl4eo-s12-sample")
    import pyarrow.parquet as pq

    assert main(["pair", str(ssl4eo), "--out", str(tmp_path / "pairs"), "--quiet", "true"]) == 0
    pairs = pq.read_table(tmp_path / "pairs" / "pairs.parquet").to_pylist()
    assert len(pairs) == 1 and pairs[0]["s2_time"].date().isoformat() == "2020-06-04"
    sim = tmp_path / "sim"
    assert main(["simulate", "--out", str(sim), "--sim.num_samples", "8", "--sim.img_size", "32"]) == 0
    shards = tmp_path / "shards"
    assert main(["shards", "--data", str(sim), "--out", str(shards), "--shards.sensors", "[s2_l1c, s1_grd]",
                 "--shards.crop", "grid", "--shards.chip_size", "16"]) == 0
    assert json.loads((shards / "shards.json").read_text())["num_samples"] == 8 * 4  # 2x2 grid chips
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "mixmae", "--model.encoder", "vit_nano_patch8", "--model.decoder",
                 "vitlite_128d2b", "--model.img_size", "16", "--data.path", str(shards), "--train.steps", "2",
                 "--train.batch_size", "4", "--train.out_dir", str(run)]) == 0
    assert (run / "reconstruction_mix.png").stat().st_size > 0


def _flat(text: str) -> str:
    return " ".join(text.split())  # help output wraps lines at the terminal width


def test_root_help_gives_one_line_per_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = _flat(capsys.readouterr().out)
    for cmd in COMMANDS.values():
        assert "\n" not in cmd.help and f"{cmd.name} {cmd.help}" in out, cmd.name


def test_pretrain_help_shows_field_docstrings_and_the_registered_methods(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = _flat(capsys.readouterr().out)
    assert "--model.mask_ratio MASK_RATIO Fraction of patches hidden from the encoder in the MAE task." in out
    assert "--model.mix.lam LAM Lambda of equation 1" in out  # a section's field
    assert "--train.steps STEPS Optimizer steps in the whole run." in out
    assert "--method {" + ",".join(METHODS) + "}" in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "simclr"])
    assert "mixmae" in capsys.readouterr().err


def test_old_flat_keys_are_errors_that_name_their_new_place(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("method: mixmae\nmodel:\n  mix_lambda: 0.3\n  aux_sensor: s1_grd\n")
    assert main(["pretrain", "--config", str(old), "--train.steps", "1"]) == 2
    err = capsys.readouterr().err
    assert str(old) in err and "model.mix_lambda is now model.mix.lam" in err
    assert "model.aux_sensor is now model.aux.sensor" in err
    assert main(["pretrain", "--model.mix_drop_ratio=0.5"]) == 2
    assert "model.mix_drop_ratio is now model.mix.drop_ratio" in capsys.readouterr().err
    section = tmp_path / "model.yaml"
    section.write_text("mix_loss_weights: [0.5, 0.5]\n")
    assert main(["pretrain", "--model", str(section)]) == 2
    assert "model.mix_loss_weights is now model.mix.lam" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_method_sections_parse_from_flags_and_are_validated():
    p = pretrain_parser()
    cfg = config_from_namespace(p, p.parse_args(["--method", "mixmae", "--model.mix.lam", "0.25",
                                                 "--model.mix.drop_ratio", "0.5"]))
    assert cfg.model.mix.loss_weights() == [0.75, 0.25] and cfg.model.mix.drop_ratio == 0.5
    with pytest.raises(ValueError, match="model.mix.lam"):
        config_from_namespace(p, p.parse_args(["--model.mix.lam", "1.5"]))


def test_cli_uses_no_private_jsonargparse_attributes():
    """The CLI is built on jsonargparse's public API only (no ``parser._subcommands_action``)."""
    import ast

    import s12mae.cli

    for path in Path(s12mae.cli.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                   and n.attr.startswith("_") and not n.attr.startswith("__")]
        assert not private, f"{path.name}: {private}"
