"""The Deeplake table: schema, episodes, labels, queries, the write lease."""
