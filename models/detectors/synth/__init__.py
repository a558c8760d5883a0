"""Synthetic-anomaly detector: a U-Net that finds foreign patches blended into normal images."""
