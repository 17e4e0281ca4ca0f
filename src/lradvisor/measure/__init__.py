"""Measurements on torch models: conservation laws, Hessian spectra, switch rates."""
