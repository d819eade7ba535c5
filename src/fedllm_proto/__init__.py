"""fedllm_proto: the wire (spec: docs/protocol.md).

Sans-I/O (no asyncio, ssl, socket, clock or torch; a test enforces it): errors, limits, frames,
encodings, codec, messages, wire, reader, states, connection, timeouts, testing. The asyncio/TLS
shell: peer, transport and tls.
"""
