import pytest

from mmcl.cli import main
from mmcl.config import ConfigError, build_config, config_reference, preset_names, valid_keys


def test_presets_load_and_differ():
    assert {"tuxpaint", "tuxpaint-dil"} <= set(preset_names())
    cil = build_config("tuxpaint")
    dil = build_config("tuxpaint-dil")
    assert cil.scenario.kind == "class" and cil.scenario.num_tasks == 4
    assert dil.scenario.kind == "domain" and dil.data.modalities == ["text", "speech"]


def test_defaults_follow_the_method_spec():
    cfg = build_config()
    assert (cfg.adapter.num_experts, cfg.adapter.top_k, cfg.freeze.threshold, cfg.memory.size) == (10, 2, 0.10, 200)
    assert cfg.loss.align_kind == "joint_infonce" and cfg.loss.distil_T == 2.0


def test_overrides_are_typed():
    cfg = build_config("tuxpaint", ["train.epochs=5", "loss.align_kind=joint_cosine", "data.split=[0.6,0.2,0.2]"])
    assert cfg.train.epochs == 5 and cfg.loss.align_kind == "joint_cosine" and cfg.data.split == [0.6, 0.2, 0.2]
    cfg = build_config("tuxpaint", {"adapter.dim": 64})
    assert cfg.adapter.dim == 64


def test_wrong_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"'train\.epoch'.*'train\.epochs'"):
        build_config("tuxpaint", ["train.epoch=3"])
    with pytest.raises(ConfigError, match="'epochs'.*train.epochs"):
        build_config("tuxpaint", ["epochs=3"])


def test_wrong_type_and_value():
    with pytest.raises(ConfigError, match="train.epochs"):
        build_config("tuxpaint", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="loss.align_kind"):
        build_config("tuxpaint", ["loss.align_kind=cosine"])
    with pytest.raises(ConfigError, match="unknown preset 'tuxpant'.*'tuxpaint'"):
        build_config("tuxpant")


def test_every_key_documented():
    ref = config_reference()
    for key in valid_keys():
        assert f"`{key}`" in ref
    assert "|  |" not in ref.replace("| `` |", "")  # no empty doc column


def test_cli_reports_config_errors(capsys):
    assert main(["run", "tuxpaint", "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err and "train.lr" in err and "Traceback" not in err


def test_preset_yaml_with_unknown_key(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"train\.epochz.*mine\.yaml"):
        build_config(str(p))


def test_string_keys_stay_strings():
    cfg = build_config("tuxpaint", ["run.name=off", "run.progress=never", "data.root='/x y'"])
    assert cfg.run.name == "off" and cfg.data.root == "/x y"


def test_docs_config_reference_is_current():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert config_reference() in doc, "docs/config.md is stale: regenerate it with `make docs-config`"
