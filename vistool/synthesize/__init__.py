"""Images made by optimisation: feature visualisation, DeepDream and style transfer.

Four small parts, as in lucent: ``param`` (how an image is parameterised), ``transform``
(random transformations for robustness), ``objectives`` (what to maximise, composable)
and ``optimize`` (the loop), with ``featureviz`` on top.
"""
