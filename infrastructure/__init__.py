"""Infrastructure: storage backends, the process's clients, the cache, the write batcher and outbox, embeddings,
the metrics."""
