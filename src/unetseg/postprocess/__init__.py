"""From predicted maps to objects: seeded watershed instances, tile/band stitching, per-object tables."""
