"""``publish.clientframes``: whole simple client text frames, and nothing else."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import CLIENT, Protocol, State
from websockets.server import ServerProtocol

from publish.clientframes import between_frames, next_text_frame


def client_bytes(*frames: Frame) -> bytes:
    """``frames`` as websockets' client writes them (masked with a random key)."""
    client = Protocol(CLIENT, state=State.OPEN)
    for frame in frames:
        client.send_frame(frame)
    return b"".join(client.data_to_send())


def text(payload: bytes, *, fin: bool = True) -> Frame:
    return Frame(Opcode.TEXT, payload, fin=fin)


def test_a_masked_text_frame_gives_its_payload_and_where_it_ends() -> None:
    data = client_bytes(text(b'{"op":"ping","id":1}'))
    assert next_text_frame(data, 0, None) == (b'{"op":"ping","id":1}', len(data))


def test_frames_back_to_back_are_read_one_after_the_other() -> None:
    payloads = [b"a", b"x" * 125, b"y" * 126, b"z" * 65_535]
    data = client_bytes(*(text(payload) for payload in payloads))
    start, read = 0, []
    while (frame := next_text_frame(data, start, None)) is not None:
        payload, start = frame
        read.append(payload)
    assert read == payloads and start == len(data)


def test_a_frame_not_wholly_received_is_left_alone() -> None:
    data = client_bytes(text(b"y" * 300))
    for end in range(len(data)):
        assert next_text_frame(data[:end], 0, None) is None
    assert next_text_frame(data, 0, None) is not None


@pytest.mark.parametrize(
    "frame",
    [
        Frame(Opcode.BINARY, b"{}"),
        text(b"{}", fin=False),
        Frame(Opcode.CONT, b"{}"),
        Frame(Opcode.PING, b""),
        Frame(Opcode.CLOSE, b"\x03\xe8"),
        text(b"x" * 70_000),
    ],
    ids=["binary", "fragment", "continuation", "ping", "close", "64-bit length"],
)
def test_any_other_frame_is_left_to_websockets(frame: Frame) -> None:
    assert next_text_frame(client_bytes(frame), 0, None) is None


def test_a_text_frame_with_a_reserved_bit_is_left_to_websockets() -> None:
    data = client_bytes(text(b"{}"))
    for bit in (0x40, 0x20, 0x10):  # rsv1 (a compressed message), rsv2, rsv3
        assert next_text_frame(bytes((data[0] | bit,)) + data[1:], 0, None) is None


def test_an_unmasked_text_frame_is_left_to_websockets_which_refuses_it() -> None:
    assert next_text_frame(bytes((0x81, 2)) + b"{}" + bytes(4), 0, None) is None


def test_a_frame_past_the_size_limit_is_left_to_websockets() -> None:
    data = client_bytes(text(b"x" * 200))
    assert next_text_frame(data, 0, 199) is None
    assert next_text_frame(data, 0, 200) is not None


def test_reading_starts_where_it_is_told() -> None:
    first, second = client_bytes(text(b"one")), client_bytes(text(b"two"))
    assert next_text_frame(first + second, len(first), None) == (b"two", len(first + second))


def open_server() -> ServerProtocol:
    """websockets' server side after a handshake, its parser in its frame loop."""
    server = ServerProtocol()
    server.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    assert server.state is State.OPEN
    return server


def test_between_frames_only_where_the_parser_starts_a_frame() -> None:
    server = open_server()
    assert between_frames(server)
    data = client_bytes(text(b'{"op":"ping","id":1}'))
    for cut in range(1, len(data)):  # a frame's start read, its rest not yet
        server.receive_data(data[:cut])
        # After the 2-byte head the parser holds it and its buffer is empty again.
        assert not between_frames(server), cut
        server.receive_data(data[cut:])
        assert between_frames(server)
    assert len(server.events_received()) == len(data) - 1


def test_not_between_frames_inside_a_fragmented_message_or_once_closing() -> None:
    server = open_server()
    server.receive_data(client_bytes(text(b"{", fin=False)))
    assert not between_frames(server)  # a text frame now would be a protocol error
    server.receive_data(client_bytes(Frame(Opcode.CONT, b"}")))
    assert between_frames(server)
    server.receive_data(client_bytes(Frame(Opcode.CLOSE, b"\x03\xe8")))
    assert not between_frames(server)
