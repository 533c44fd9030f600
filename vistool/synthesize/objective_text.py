"""Objectives written as text, as lucent's users write them, composed with ``+ - *``,
numbers and parentheses:

- ``LAYER:C`` the mean of channel C of LAYER (lucent's ``"mixed4a:476"``);
  ``LAYER:C:neuron`` its centre position; ``LAYER:C:channel`` the same as ``LAYER:C``;
- ``logit:K`` class K's logit;
- functions: ``channel(LAYER, C)``, ``neuron(LAYER, C)``, ``logit(K)``,
  ``deepdream(LAYER)``, ``diversity(LAYER)`` (couples the images of a batch),
  ``l1([CONSTANT])``, ``l2([CONSTANT])``, ``total_variation()``, ``blur([SIGMA])``,
  ``direction(LAYER, FILE.npy)`` (the cosine similarity of the channel vectors to one
  saved as a NumPy vector; only where reading files is allowed).

``"-features.12:3"`` is the negative image; ``"features.12:3 - 0.5*diversity(features.12)"``
a diverse batch. :func:`parse` checks each layer and channel with a callback before anything
runs, and a bad string is one error naming the bad part.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..core.errors import VistoolError
from . import objectives as obj

__all__ = ["FUNCTIONS", "parse"]

#: function name -> (objective, argument kinds: "layer", "int", "number", "number?",
#: "vector": a .npy file)
FUNCTIONS: dict[str, tuple[Callable[..., obj.Objective], tuple[str, ...]]] = {
    "channel": (obj.channel, ("layer", "int")),
    "neuron": (obj.neuron, ("layer", "int")),
    "logit": (obj.class_logit, ("int",)),
    "deepdream": (obj.deepdream, ("layer",)),
    "diversity": (obj.diversity, ("layer",)),
    "l1": (obj.l1, ("number?",)),
    "l2": (obj.l2, ("number?",)),
    "total_variation": (obj.total_variation, ()),
    "blur": (obj.blur, ("number?",)),
    "direction": (obj.direction, ("layer", "vector")),
}
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.:/]))"
                    r"|(?P<name>[\w/~][\w./~-]*(?::[\w.]+)*)|(?P<op>[-+*(),])|(?P<bad>\S))")
HELP = ("write LAYER:CHANNEL[:neuron], logit:CLASS or a function "
        f"({', '.join(FUNCTIONS)}), with + - * and numbers")

#: ``check(layer, channel)``: raise if the layer (or its channel, when not None) does not
#: exist, else return its channel count (None if unknown); ``check(None, index)`` checks
#: a class index.
Check = Callable[[str | None, int | None], int | None]
#: ``read(path)``: a vector (C,) from a file the user named.
Read = Callable[[str], torch.Tensor]


def parse(text: str, check: Check | None = None, read: Read | None = None) -> obj.Objective:
    """The objective ``text`` describes (the module's docstring gives the language).
    ``read`` loads ``direction``'s vector; without it (the dashboard) no file is read.

    Raises:
        VistoolError: a part that is not an objective, an unknown function or a wrong
            argument, naming it; whatever ``check`` raises for a layer, channel or class.
    """
    tokens = _tokens(text)
    parser = _Parser(tokens, check or (lambda _layer, _index: None), text, read)
    value = parser.expression()
    if parser.position < len(tokens):
        raise parser.error(f"unexpected {tokens[parser.position][1]!r}")
    if not isinstance(value, obj.Objective):
        raise VistoolError(f"objective {text!r} is a number, not an objective; {HELP}")
    return value


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "bad":
            raise VistoolError(f"objective {text!r}: unexpected {match.group(kind)!r}; {HELP}")
        tokens.append((kind, match.group(kind)))
    return tokens


class _Parser:
    """Recursive descent: expression := term (('+'|'-') term)*; term := unary ('*' unary)*;
    unary := '-' unary | number | '(' expression ')' | name ['(' arguments ')']."""

    def __init__(self, tokens: list[tuple[str, str]], check: Check, text: str,
                 read: Read | None):
        self.tokens, self.check, self.text, self.read, self.position = (tokens, check, text,
                                                                        read, 0)

    def error(self, what: str) -> VistoolError:
        return VistoolError(f"objective {self.text!r}: {what}; {HELP}")

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise self.error("it ends too early")
        self.position += 1
        return self.tokens[self.position - 1]

    def expect(self, op: str) -> None:
        kind, value = self.take()
        if (kind, value) != ("op", op):
            raise self.error(f"expected {op!r}, found {value!r}")

    def expression(self):
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            other = self.term()
            value = value + other if op == "+" else value - other
        return value

    def term(self):
        value = self.unary()
        while self.peek() == "*":
            self.take()
            value = value * self.unary()
        return value

    def unary(self):
        kind, value = self.take()
        if (kind, value) == ("op", "-"):
            return -self.unary()
        if kind == "number":
            return float(value)
        if (kind, value) == ("op", "("):
            inner = self.expression()
            self.expect(")")
            return inner
        if kind != "name":
            raise self.error(f"unexpected {value!r}")
        if self.peek() == "(":
            return self.call(value)
        return self.spec(value)

    def spec(self, text: str) -> obj.Objective:
        parts = text.split(":")
        if len(parts) == 2 and parts[0] == "logit":
            return self.build("logit", [parts[1]])
        if len(parts) == 2 or (len(parts) == 3 and parts[2] in ("channel", "neuron")):
            return self.build(parts[2] if len(parts) == 3 else "channel", parts[:2])
        raise self.error(f"{text!r} is not an objective")

    def call(self, name: str) -> obj.Objective:
        self.expect("(")
        arguments = []
        while self.peek() != ")":
            kind, value = self.take()
            if kind not in ("name", "number"):
                raise self.error(f"unexpected {value!r} in {name}(...)")
            arguments.append(value)
            if self.peek() == ",":
                self.take()
        self.expect(")")
        return self.build(name, arguments)

    def build(self, name: str, arguments: list[str]) -> obj.Objective:
        if name not in FUNCTIONS:
            raise self.error(f"unknown function {name!r}")
        function, kinds = FUNCTIONS[name]
        required = [k for k in kinds if not k.endswith("?")]
        if not len(required) <= len(arguments) <= len(kinds):
            raise self.error(f"{name} takes {len(required)}"
                             f"{'' if len(required) == len(kinds) else f'-{len(kinds)}'} "
                             f"arguments ({', '.join(kinds) or 'none'}), got {len(arguments)}")
        values = [self.argument(name, kind.rstrip("?"), text)
                  for kind, text in zip(kinds, arguments)]
        layer = next((v for k, v in zip(kinds, values) if k == "layer"), None)
        index = next((v for k, v in zip(kinds, values) if k == "int"), None)
        if layer is not None or index is not None:
            channels = self.check(layer, index)
            vector = next((v for k, v in zip(kinds, values) if k == "vector"), None)
            if vector is not None and channels is not None and len(vector) != channels:
                raise self.error(f"{name}'s vector has {len(vector)} values; {layer!r} has "
                                 f"{channels} channels")
        return function(*values)

    def argument(self, name: str, kind: str, text: str):
        if kind == "vector":
            if self.read is None:
                raise self.error(f"{name}(...) reads a vector from a file, which is not "
                                 "allowed here")
            return self.read(text)
        try:
            return {"layer": str, "int": int, "number": float}[kind](text)
        except ValueError:
            raise self.error(f"{name}'s {kind} argument must be a{'n' if kind == 'int' else ''} "
                             f"{kind}, not {text!r}") from None
