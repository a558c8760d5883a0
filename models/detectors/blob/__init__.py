"""Blob baseline: a multi-scale Hessian dot-enhancement filter (Li, Sone & Doi 2003), the classical nodule-CAD filter."""
