"""gengate's HTTP gateway: Ollama's JSON API transcoded to the gRPC service."""
