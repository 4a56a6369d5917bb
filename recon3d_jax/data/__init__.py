"""Datasets: procedural scenes -> TFDS (array_record) -> grain input pipeline."""
