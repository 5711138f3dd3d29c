"""Prediction jobs: one file to its outputs (:mod:`~unetseg.inference.jobs.file`), a file or folder in this
process or its ``torchrun`` share (:mod:`~unetseg.inference.jobs.folder`), a cohort on a Dask cluster
(:mod:`~unetseg.inference.jobs.cohort`)."""
