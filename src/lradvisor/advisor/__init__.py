"""Learning-rate advice: :func:`suggest` on your own objects, :func:`advise` on a model file.

The pipeline (``pipeline.py``) runs five stages, one module each: ``sharpness`` → ``bound``
→ ``probe`` → ``choice`` → ``theory``. ``problem`` normalises the inputs, ``trials`` trains
the probe's (rate, seed) trials batched, ``optimizers`` reads the user's optimizer.
"""

from __future__ import annotations

from lradvisor.advisor.config_route import advise, problem_from_config
from lradvisor.advisor.pipeline import advise_problem, suggest

__all__ = ["advise", "advise_problem", "problem_from_config", "suggest"]
