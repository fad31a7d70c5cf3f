"""gRPC plumbing: mutual-TLS credentials, the server, the channel pool, auth and error mapping."""
