"""Ingestion (DICOM CT → 1 mm volumes), nodule-cube extraction, augmentation and splits."""
