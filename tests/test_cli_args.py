"""The command line: options, positionals and key=value overrides in any order, every subcommand."""
import pytest

from mmcl.cli import main, parse_args


@pytest.mark.parametrize("argv", [
    ["prepare", "ave", "--root", "/d", "data.on_missing=skip", "train.epochs=2"],
    ["prepare", "ave", "data.on_missing=skip", "--root", "/d", "train.epochs=2"],
    ["prepare", "--root", "/d", "ave", "data.on_missing=skip", "train.epochs=2"],
])
def test_prepare_overrides_before_or_after_options(argv):
    a = parse_args(argv)
    assert (a.command, a.preset, a.root, a.overrides) == ("prepare", "ave", "/d",
                                                         ["data.on_missing=skip", "train.epochs=2"])


def test_run_config_compare_report_intermixed():
    a = parse_args(["run", "tuxpaint", "run.seed=1", "--fresh", "train.epochs=2", "-v", "--run-dir", "x"])
    assert (a.preset, a.overrides, a.fresh, a.verbose, a.run_dir) == ("tuxpaint", ["run.seed=1", "train.epochs=2"],
                                                                      True, True, "x")
    a = parse_args(["config", "tuxpaint", "--reference", "train.epochs=2"])
    assert (a.preset, a.overrides, a.reference) == ("tuxpaint", ["train.epochs=2"], True)
    a = parse_args(["compare", "runs/a", "--out", "o", "runs/b", "--group-by", "method", "runs/c"])
    assert (a.run_dirs, a.out, a.group_by) == (["runs/a", "runs/b", "runs/c"], "o", "method")
    a = parse_args(["report", "--tsne", "runs/a"])
    assert (a.run_dir, a.tsne) == ("runs/a", True)


def test_bad_lines_still_fail_clearly(capsys):
    with pytest.raises(SystemExit):
        main(["run", "tuxpaint", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nosuch"])
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err
    assert main(["config", "tuxpaint", "train.epoch=3"]) == 2  # a wrong key: the config's own error
    assert "Did you mean 'train.epochs'" in capsys.readouterr().err
