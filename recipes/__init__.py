"""``tune run … recipes/focusft_distributed.py`` runs ``recipes.focusft_distributed``, so this package is
imported first: importing :mod:`focusft` here installs its console filters before torchtune loads torchao."""

import focusft  # noqa: F401
