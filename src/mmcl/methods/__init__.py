"""Methods register themselves by name; importing this package registers all of them."""
from mmcl.methods import cma  # noqa: F401
from mmcl.methods import derpp, er, ewc, finetune, icarl, joint, lwf  # noqa: F401
from mmcl.methods import codaprompt, dualprompt, l2p  # noqa: F401
