"""The authorization table: one row for every RPC the node serves, the role defaults of
issue 21, and refusals that name the role needed and the role the caller has."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from p2pagent import errors
from p2pagent._proto import agent_pb2, peer_pb2
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.transport import authorization, reflection
from p2pagent.transport.authorization import TABLE, authorize, roles_for

reflection.register_v1_file()
#: Every service the node serves (transport/server.py adds health and reflection v1 and v1alpha).
SERVED: tuple[FileDescriptor, ...] = (
    agent_pb2.DESCRIPTOR,
    peer_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR,
    descriptor_pool.Default().FindFileByName(reflection.V1_FILE),
)


def served_methods() -> set[str]:
    return {
        f"/{svc.full_name}/{m.name}"
        for file in SERVED
        for svc in file.services_by_name.values()
        for m in svc.methods
    }


def who(role: Role) -> Identity:
    return Identity("c1", role, role.value)


def test_every_served_rpc_has_exactly_one_row() -> None:
    missing = served_methods() - TABLE.keys()
    assert not missing, f"add a row to transport/authorization.py TABLE for {sorted(missing)}"
    stale = TABLE.keys() - served_methods()
    assert not stale, f"rows for RPCs nobody serves: {sorted(stale)}"


def test_a_method_missing_from_the_table_is_refused_for_everyone() -> None:
    for role in Role:
        with pytest.raises(errors.PermissionDenied, match="not in the authorization table"):
            authorize("/p2pagent.v1.AgentService/SomethingNew", who(role))


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("Put", {Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("Watch", {Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("Infer", {Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("SubmitAndWait", {Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("ListModels", {Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("Members", {Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("PublishModel", {Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("DeleteModel", {Role.PUBLISHER, Role.ADMIN, Role.NODE}),
        ("Revoke", {Role.ADMIN, Role.NODE}),
    ],
)
def test_agent_defaults(method: str, allowed: set[Role]) -> None:
    assert roles_for(f"/p2pagent.v1.AgentService/{method}") == allowed
    for role in Role:
        if role in allowed:
            authorize(f"/p2pagent.v1.AgentService/{method}", who(role))
        else:
            with pytest.raises(errors.PermissionDenied):
                authorize(f"/p2pagent.v1.AgentService/{method}", who(role))


def test_the_peer_service_is_for_nodes_only() -> None:
    peer = [m for m in TABLE if m.startswith(authorization.PEER)]
    assert len(peer) == len(peer_pb2.DESCRIPTOR.services_by_name["PeerService"].methods)
    for method in peer:
        assert roles_for(method) == {Role.NODE}
        with pytest.raises(errors.PermissionDenied, match=r"needs role node.*has role admin"):
            authorize(method, who(Role.ADMIN))


def test_a_refusal_names_the_role_needed_and_the_role_held() -> None:
    with pytest.raises(errors.PermissionDenied) as e:
        authorize("/p2pagent.v1.AgentService/PublishModel", who(Role.CLIENT))
    text = str(e.value)
    assert "needs role publisher" in text and "has role client" in text
    assert "certs issue --role publisher" in text
    with pytest.raises(errors.PermissionDenied, match=r"needs role admin.*has role publisher"):
        authorize("/p2pagent.v1.AgentService/Revoke", who(Role.PUBLISHER))


def test_the_rendered_table_lists_every_row_with_its_roles() -> None:
    text = authorization.render()
    assert text.count("\n") == len(TABLE) + 2
    assert "| `/p2pagent.v1.AgentService/PublishModel` | publisher, admin, node |" in text
    assert "| `/p2pagent.v1.PeerService/Replicate` | node |" in text
