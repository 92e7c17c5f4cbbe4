"""The control plane: gRPC services on a Unix socket, one module per service."""
