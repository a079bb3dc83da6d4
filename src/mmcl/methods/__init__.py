"""Methods register themselves by name; importing this package registers all of them."""
from mmcl.methods import cma  # noqa: F401
