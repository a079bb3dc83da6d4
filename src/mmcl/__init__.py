"""mmcl: multi-modal continual learning."""
__version__ = "0.1.0"


def run(preset, overrides=None, run_dir=None, fresh=False):
    """Train and evaluate a preset (resuming a run folder's checkpoint); see mmcl.api.run."""
    from mmcl.api import run as _run
    return _run(preset, overrides, run_dir, fresh=fresh)
