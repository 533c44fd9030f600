"""Explanations of a prediction: activations, class activation maps, pixel attributions."""
