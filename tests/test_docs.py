"""The runnable examples in the docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = ["keras_r21d", "keras_r21d.models.layers", "keras_r21d.models.backbone", "keras_r21d.applications",
           "keras_r21d.data.preprocessing", "keras_r21d.presets.labels", "keras_r21d.models.optimize"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    import keras

    import keras_r21d

    module = importlib.import_module(module_name)
    result = doctest.testmod(module, extraglobs={"keras": keras, "keras_r21d": keras_r21d},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
