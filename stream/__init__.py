"""headrace stream: the Kafka worker, client SDK, embedded broker and command line."""
