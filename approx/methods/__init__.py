"""One file per method; importing this package registers them all."""

from approx.methods import (  # noqa: F401
    bad_teacher,
    conv_transpose,
    finetune,
    gradient_ascent,
    l1_sparse,
    masked_small_gradients,
    neggrad_plus,
    random_label,
    salun,
    scrub,
    sfr_on,
    ssd,
    ugradsl,
)
