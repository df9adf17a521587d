"""Data: files and readers, record schemas, canonical record tables, images, labels from the chat
template, collation into batches and the built-in dataset. May import config only."""
