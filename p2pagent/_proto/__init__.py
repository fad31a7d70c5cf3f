"""Generated protobuf and gRPC stubs. Do not edit; run ``make proto``."""
