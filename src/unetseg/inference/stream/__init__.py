"""Streamed prediction in flat memory, for slides and volumes of any size: the strip-by-strip predictor
(:mod:`~unetseg.inference.stream.predictor`), its strips, band reader and block sink
(:mod:`~unetseg.inference.stream.strips`), reader and writer threads
(:mod:`~unetseg.inference.stream.threads`), whole-image normalisation statistics and tissue skipping
(:mod:`~unetseg.inference.stream.statistics`), and one
slide or volume from file to OME-Zarr / OME-TIFF (:mod:`~unetseg.inference.stream.slides`,
:mod:`~unetseg.inference.stream.slide_instances`)."""
