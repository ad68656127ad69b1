"""Custom Keras layers the saved models need (imported by models.py, so loading registers them)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="cxrbook")
class SymmetricShear(keras.layers.RandomShear):
    """``keras.layers.RandomShear`` with a symmetric factor whose config round-trips.

    Keras 3.15 saves a float factor ``f`` as ``(-f, f)`` and its own constructor
    then rejects the negative bound, so a model holding RandomShear cannot be
    reloaded. This layer saves ``f`` itself.
    """

    def get_config(self) -> dict:
        config = super().get_config()
        for name in ("x_factor", "y_factor"):
            lo, hi = config[name]
            if lo != -hi:
                raise ValueError(f"SymmetricShear needs a symmetric {name}, got {(lo, hi)}")
            config[name] = float(hi)
        return config
