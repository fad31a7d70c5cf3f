"""gRPC server reflection under both names: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only v1alpha, and clients that speak v1 alone (newer grpcurl, grpcui,
Postman, Java and Go tooling) get UNIMPLEMENTED from it. v1 is v1alpha with its package renamed:
every message, field and number is the same, so one servicer answers both, the v1 method
decoding and encoding with the v1alpha message classes (the bytes are identical).

The v1 file itself (``grpc/reflection/v1/reflection.proto``) is added to the descriptor pool,
built from the v1alpha descriptor with the package renamed, so a client can also describe the
v1 service it is talking to.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
V1ALPHA_SERVICE: str = reflection.SERVICE_NAME
V1_SERVICE = f"{V1}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: the v1alpha file with ``v1alpha`` renamed."""
    fd = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fd)
    fd.name = V1_FILE
    fd.package = V1
    fd.ClearField("options")  # java_package and the like name v1alpha
    old, new = f".{V1ALPHA}.", f".{V1}."
    messages = list(fd.message_type)
    while messages:
        m = messages.pop()
        messages.extend(m.nested_type)
        for field in m.field:
            if field.type_name:  # scalars have none; setting "" would mark one as present
                field.type_name = field.type_name.replace(old, new)
    for service in fd.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return fd


def register_v1_file(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Adds the v1 file to ``pool`` (the default one) unless it is there already."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor().SerializeToString())


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serves reflection for ``service_names`` (and for itself) as v1alpha and v1."""
    register_v1_file()
    names = [*service_names, V1ALPHA_SERVICE, V1_SERVICE]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )
