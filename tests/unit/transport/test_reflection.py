"""Reflection v1 is v1alpha renamed: the same messages and field numbers, so one servicer
answers both (transport/reflection.py)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from p2pagent.transport import reflection


def _shapes(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, list[tuple[str, int, int, str]]]:
    return {
        m.name: [(f.name, f.number, f.type, f.type_name.rsplit(".", 1)[-1]) for f in m.field]
        for m in fd.message_type
    }


def test_v1_file_has_the_v1alpha_messages_under_the_v1_package() -> None:
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    v1 = reflection.v1_file_descriptor()
    assert v1.package == "grpc.reflection.v1" and v1.name == reflection.V1_FILE
    assert _shapes(v1) == _shapes(alpha)
    assert "v1alpha" not in v1.SerializeToString().decode("latin-1")


def test_the_v1_service_is_found_by_symbol_and_its_messages_by_name() -> None:
    pool = descriptor_pool.DescriptorPool()
    reflection.register_v1_file(pool)
    reflection.register_v1_file(pool)  # a second node in one process adds nothing
    service = pool.FindServiceByName(reflection.V1_SERVICE)
    method = service.methods_by_name["ServerReflectionInfo"]
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type.full_name == "grpc.reflection.v1.ServerReflectionResponse"


def test_a_v1_request_decodes_as_v1alpha_byte_for_byte() -> None:
    pool = descriptor_pool.DescriptorPool()
    reflection.register_v1_file(pool)
    from google.protobuf import message_factory

    request_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    wire = request_cls(
        host="h", file_containing_symbol="p2pagent.v1.AgentService"
    ).SerializeToString()
    alpha = reflection_pb2.ServerReflectionRequest.FromString(wire)
    assert alpha.host == "h" and alpha.file_containing_symbol == "p2pagent.v1.AgentService"
