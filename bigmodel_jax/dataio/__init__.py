"""What inputs (`data/`) are built from: reading, tokenizing, packing,
batching and prefetching. Not plug-ins: nothing here is picked by name."""
