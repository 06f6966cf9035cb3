"""The preset manifest (presets.json) and model cards, shipped with keras_r21d."""
