"""FocuSFT: bilevel, dilution-aware long-context fine-tuning for torchtune.

Importing the package first filters known third-party console noise
(:mod:`focusft.console`); torchao logs its line while being imported, so this runs
before anything here imports torchtune.
"""

from focusft.console import quiet_third_party_noise

quiet_third_party_noise()
