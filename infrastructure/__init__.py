"""Infrastructure: storage backends, and (next) the connection pool, the Redis cache and the write batcher."""
