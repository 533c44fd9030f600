"""One module per tab; each has ``render(session)`` and calls the library only."""

from . import activations, cam, dream, evaluate, filters, generative, layers, style

CLASSIFIER_TABS = (("Layers", layers), ("Activations", activations), ("Filters", filters),
                   ("Class activation maps", cam), ("DeepDream", dream),
                   ("Style transfer", style), ("Evaluate", evaluate))
GENERATIVE_TABS = (("Layers", layers), ("Generative", generative))
