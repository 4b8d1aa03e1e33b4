"""Sobol attribution (Fel et al., NeurIPS 2021) and the generic Sobol-analysis layer under it.

Swappable parts, each usable on its own for any function of ``d`` uniform variables:

- :mod:`~xai.attributions.sobol.samplers`: the Saltelli design ``[A; B; C_1; ...; C_d]``
  (``sample``, ``design_matrix``; Sobol, Halton, Latin hypercube, random);
- :mod:`~xai.attributions.sobol.estimators`: first- and total-order indices from the stacked
  outputs (``estimate``; Jansen, Homma/Saltelli, Janon, Glen-Isaacs), and
  :func:`sobol_indices`, which evaluates a batched torch function on the design in chunks;
- :mod:`~xai.attributions.sobol.perturbations`: how a mask perturbs an image (inpainting,
  blur, amplitude, or a callable);
- :mod:`~xai.attributions.sobol.attribution`: :class:`SobolAttribution`.
"""

# The parts, importable from here (``name as name``: an explicit re-export, not in ``__all__``).
from xai.attributions.sobol.attribution import SobolAttribution
from xai.attributions.sobol.estimators import ESTIMATORS as ESTIMATORS
from xai.attributions.sobol.estimators import SobolIndices, sobol_indices
from xai.attributions.sobol.estimators import estimate as estimate
from xai.attributions.sobol.estimators import split_outputs as split_outputs
from xai.attributions.sobol.perturbations import PERTURBATIONS as PERTURBATIONS
from xai.attributions.sobol.perturbations import Amplitude as Amplitude
from xai.attributions.sobol.perturbations import Blur as Blur
from xai.attributions.sobol.perturbations import Inpainting as Inpainting
from xai.attributions.sobol.perturbations import Perturbation as Perturbation
from xai.attributions.sobol.samplers import SAMPLERS as SAMPLERS
from xai.attributions.sobol.samplers import design_matrix as design_matrix
from xai.attributions.sobol.samplers import sample as sample

# Re-exported by ``xai.attributions``; the other names stay under ``xai.attributions.sobol``.
__all__ = ["SobolAttribution", "SobolIndices", "sobol_indices"]
