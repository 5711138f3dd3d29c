"""unetseg in napari (``pip install 'unetseg[napari]'``): a dock widget that segments, takes corrections and
fine-tunes (:mod:`.widget`, over :mod:`.rounds`), readers for unetseg's outputs (:mod:`.readers`) and the
demo's synthetic touching cells as sample data (:mod:`.sample`). Declared in ``napari.yaml`` (npe2)."""
