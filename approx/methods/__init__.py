"""One file per method; importing this package registers them all."""

from approx.methods import (  # noqa: F401
    finetune,
    gradient_ascent,
    l1_sparse,
    random_label,
    salun,
    sfr_on,
    ugradsl,
)
