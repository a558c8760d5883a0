"""The pipeline stages, one module each, named by the stage: ``pipeline/stages/<stage>.py``.

A stage module holds only the declaration ``STAGE = Stage(...)`` (:mod:`pipeline.core.stage`) and a
``run(cfg, run_dir)`` that imports the module doing the work when the stage runs. The work modules
live in the layers and are named by their job (``preprocessing.dicom_ingest``,
``preprocessing.cube_extract``, ``preprocessing.grouped_splits``, ``models.training``,
``models.scoring``, ``evaluation.anomaly_map``, ``evaluation.evaluator``). The map stage's module is
``map_`` (a trailing underscore, PEP 8's way of not shadowing the builtin ``map``).
"""
