"""GEOM: a classifier that predicts which rotation was applied; anomalies confuse it."""
