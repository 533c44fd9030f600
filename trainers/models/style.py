"""The feed-forward style network (Johnson et al.), trained by the ``fast-style`` recipe.

The network lives in the library (:mod:`vistool.synthesize.fast_style`), which applies it;
registering it here lets its checkpoints reopen with ``vistool.load_model``.
"""

from __future__ import annotations

from vistool.synthesize.fast_style import TransformerNet

from . import register_model

register_model("style_transformer", input_size=(3, 256, 256), mean=(0.0, 0.0, 0.0),
               std=(1.0, 1.0, 1.0))(TransformerNet)
