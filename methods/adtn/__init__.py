"""``adtn``: the method (method.py), its weight generator (generator.py) and how it starts
(start.py: initialisation and scale), fitting the generator to a weight (prefit.py), the map
from the generated tensor to the weight (layout.py) and the layer that replaces a
Linear/Conv2d (layer.py). Importing the package registers the method."""
from methods.adtn.generator import ADTNGenerator, num_sites, param_count  # noqa: F401
from methods.adtn.prefit import prefit, sgd_gain  # noqa: F401
from methods.adtn.layer import ADTNLayer  # noqa: F401
from methods.adtn.layout import Layout, plan_layout  # noqa: F401
from methods.adtn.method import ADTN, stage_epochs  # noqa: F401
