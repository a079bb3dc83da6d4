"""A plug-in is one file: a toy method with two settings, found through $MMCL_PLUGINS, shows
its keys in the key reference, in `mmcl run --help`, in built configs, and is validated."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mmcl import plugins, registry, schema
from mmcl.config import ConfigError, build_config, config_reference, from_dict, to_dict

TOY = textwrap.dedent('''
    """A toy method for the plug-in test."""
    from dataclasses import dataclass

    from mmcl import losses
    from mmcl.methods.base import ADAPTER_FREE, Method
    from mmcl.registry import register_method
    from mmcl.settings import setting


    @dataclass
    class ToySettings:
        strength: float = setting("how hard the toy pushes", 0.5, minimum=0.0)
        flavour: str = setting("which toy", "plain", choices=("plain", "fancy"))


    @register_method("toy", settings=ToySettings, defaults=ADAPTER_FREE, former_keys={"toy_strength": "strength"})
    class Toy(Method):
        """Toy: cross-entropy scaled by method.toy.strength (a test plug-in)."""

        def training_step(self, idx):
            out, target = self.forward_batch(idx)
            return {"cls": self.settings.strength * losses.classification(out.logits, target)}
''')


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    (tmp_path / "mmcl_toy_method.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV, "mmcl_toy_method")
    yield tmp_path
    registry.unregister("method", "toy")
    plugins._loaded.discard("mmcl_toy_method")
    sys.modules.pop("mmcl_toy_method", None)


def test_toy_method_keys_in_the_reference_and_the_config(toy_plugin):
    ref = config_reference()
    assert "| `method.toy.strength` | float | `0.5` | how hard the toy pushes (allowed: >= 0.0) |" in ref
    assert "`method.toy.flavour`" in ref and "one of plain, fancy" in ref
    cfg = build_config("tuxpaint", ["method.name=toy", "method.toy.strength=2"])
    assert cfg.method.toy.strength == 2.0 and cfg.method.toy.flavour == "plain"
    assert cfg.model.adapters is False  # the method's defaults apply
    assert from_dict(to_dict(cfg)).method.toy.strength == 2.0
    with pytest.raises(ConfigError, match=r"'method.toy.strength' must be at least 0.0, got -1"):
        build_config("tuxpaint", ["method.toy.strength=-1"])
    with pytest.raises(ConfigError, match=r"'method.toy.flavour' = 'sour' is not one of plain, fancy"):
        build_config("tuxpaint", ["method.toy.flavour=sour"])
    with pytest.raises(ConfigError, match=r"'method.toy_strength' was renamed: use 'method.toy.strength'"):
        build_config("tuxpaint", ["method.toy_strength=1"])


def test_toy_method_keys_on_the_command_line(toy_plugin):
    env = {**os.environ, plugins.ENV: "mmcl_toy_method",
           "PYTHONPATH": os.pathsep.join([str(toy_plugin), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "mmcl", "run", "--help"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "method.toy.strength (float, default 0.5)" in out.stdout
    assert "method.toy.flavour (str, default 'plain')" in out.stdout
    listed = subprocess.run([sys.executable, "-m", "mmcl", "list"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "toy" in listed.stdout and "a test plug-in" in listed.stdout


def test_a_missing_plugin_module_is_named(monkeypatch):
    monkeypatch.setenv(plugins.ENV, "no_such_mmcl_plugin")
    with pytest.raises(ImportError, match=r"no_such_mmcl_plugin.*\$MMCL_PLUGINS"):
        plugins.load_all()


def test_schema_follows_the_registry(toy_plugin):
    assert "method.toy.strength" in schema.keys()
    registry.unregister("method", "toy")
    assert "method.toy.strength" not in schema.keys()


@pytest.mark.parametrize("old, new", [
    ("method.ewc_lambda=3", "'method.ewc.penalty'"),
    ("method.lwf_T=3", "'method.lwf.temperature'"),
    ("method.prompt_train_mask=false", "'method.codaprompt.train_mask' or 'method.dualprompt.train_mask' or "
                                       "'method.l2p.train_mask'"),
    ("data.languages=[fr]", "'data.tuxpaint.languages'"),
    ("data.multi_label=first", "'data.samsemo.multi_label'"),
    ("encoders.accel.fit=first_task", "'encoders.accel.imu.fit'"),
    ("data.sensor_window=8", "'encoders.accel.imu.window' or 'encoders.gyro.imu.window'"),
])
def test_a_key_of_the_earlier_release_names_its_replacement(old, new):
    with pytest.raises(ConfigError, match=f"was renamed: use {new}".replace(".", r"\.")):
        build_config("tuxpaint", [old])


def test_a_saved_config_of_the_earlier_release_is_migrated():
    cfg = build_config("tuxpaint", ["method.name=ewc", "method.ewc.penalty=7", "data.tuxpaint.languages=[fr,es]"])
    old = to_dict(cfg)
    old["method"] = {"name": "ewc", "ewc_lambda": 7.0, "ewc_gamma": 1.0, "lwf_alpha": 1.0, "prompt_pull": 0.1}
    old["data"].pop("tuxpaint")
    old["data"]["languages"], old["data"]["max_stamps_per_class"] = ["fr", "es"], 0
    old["data"]["sensor_length"], old["data"]["sensor_window"] = 192, 24
    for slot in old["encoders"]:  # every slot had fit keys; the sensor slots' moved to imu.*
        old["encoders"][slot].update({"fit": "none", "fit_epochs": 10})
        old["encoders"][slot].pop("imu", None)
    assert to_dict(from_dict(old)) == to_dict(cfg)


def test_a_checkpoint_config_of_the_earlier_release_resumes():
    """What restore() compares: the checkpoint's config, migrated, against this run's."""
    from mmcl.resume import config_differences, saved_config
    cfg = build_config("tuxpaint", ["method.name=lwf", "method.lwf.alpha=0.5"])
    old = to_dict(cfg)
    old["method"] = {"name": "lwf", "lwf_alpha": 0.5, "lwf_T": 2.0}
    assert config_differences(saved_config(old), to_dict(cfg)) == []
    old["method"]["lwf_alpha"] = 0.25  # a real difference is still named, under its new key
    assert config_differences(saved_config(old), to_dict(cfg)) == [
        "method.lwf.alpha: 0.25 in the checkpoint, 0.5 now"]
