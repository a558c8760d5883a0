"""Metrics, plots and residual overlays in the CT's own geometry."""
