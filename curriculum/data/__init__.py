"""Data: readers, canonical records, images, collation and the built-in dataset."""
