"""Files: one reader per format (:mod:`~unetseg.io.readers`, read whole or opened lazily), the images and
masks of a dataset folder and the outputs of a prediction (:mod:`~unetseg.io.images`), the byte level of
each format (:mod:`~unetseg.io.formats`), lazy images of slides and volumes with their pyramid levels and
tissue (:mod:`~unetseg.io.lazy`, :mod:`~unetseg.io.tissue`), the NGFF (OME-Zarr) and OME-TIFF writers with
their pyramids (:mod:`~unetseg.io.ngff`, :mod:`~unetseg.io.ometiff`, :mod:`~unetseg.io.pyramid`) and physical
pixel sizes (:mod:`~unetseg.io.physical`). Below every stage that reads data; above only the config, the
errors and atomic file writing.
"""
