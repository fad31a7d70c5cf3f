"""Settings of the OpenAI-compatible HTTP door (``[openai]``)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError


@dataclass
class OpenAIConfig:
    """The HTTPS door speaking OpenAI's API, with the node's certificate and mutual TLS: a
    caller presents a certificate from the cluster CA and gets the same roles as on gRPC."""

    #: HOST:PORT the door listens on (HTTPS, mutual TLS), e.g. ``127.0.0.1:7480``; empty
    #: (the default) serves no door. ``p2pagentd --http-listen`` sets it.
    listen: str = ""
    #: Largest request body accepted, in bytes; more is refused with 413 before it is parsed.
    max_request_bytes: int = 4 * 1024 * 1024
    #: Texts one ``/v1/embeddings`` call may carry.
    max_embedding_inputs: int = 2048
    #: Open connections and requests the door serves at once; a request beyond it gets 503
    #: at once (OpenAI's error shape, ``retry-after: 1``) and its connection is closed.
    max_connections: int = 1024

    def validate(self) -> OpenAIConfig:
        from p2pagent.config import parse_address

        if self.listen:
            parse_address(self.listen, "openai.listen address")
        if self.max_request_bytes < 1024:
            raise ConfigError(
                f"openai.max_request_bytes must be at least 1024, got {self.max_request_bytes}"
            )
        if self.max_connections < 1:
            raise ConfigError(
                f"openai.max_connections must be at least 1, got {self.max_connections}"
            )
        if self.max_embedding_inputs < 1:
            raise ConfigError(
                f"openai.max_embedding_inputs must be at least 1, got {self.max_embedding_inputs}"
            )
        return self
