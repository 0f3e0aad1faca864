"""Datasets on storage: simulated Parquet shards, manifests and readers (``shards``), the exit-wave store (``waves``), and imported microscope files (``micrographs``)."""
