"""The authorization table: which roles may call each RPC the node serves.

One table, read by the guard on every call and rendered into docs/API.md and docs/security.md's
roles section (``p2pagent.docgen``), so what is documented is what is enforced. A method
missing from the table is refused for everyone, and tests/unit/transport/test_authorization.py
fails until every RPC of every served service has a row: a new RPC cannot ship open by
accident.

The user roles nest: ``client`` < ``publisher`` < ``admin``. A ``node`` identity may call
everything (the Peer service is for nodes only, and operators may run p2pagentctl with a node's
certificate, as before roles existed). Finer checks that depend on the request (a publisher may
delete only the models it published; reserved state namespaces are read-only) are made by the
handlers; the table only gates the method.
"""

from __future__ import annotations

from collections.abc import Iterator

from p2pagent import errors
from p2pagent.identity.spiffe import Identity, Role

#: Who may call a method, from the weakest role up.
CLIENT = frozenset({Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE})
PUBLISHER = frozenset({Role.PUBLISHER, Role.ADMIN, Role.NODE})
ADMIN = frozenset({Role.ADMIN, Role.NODE})
NODE = frozenset({Role.NODE})

AGENT = "/p2pagent.v1.AgentService/"
PEER = "/p2pagent.v1.PeerService/"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1.ServerReflection/"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/"

#: Full gRPC method name -> (roles allowed, what the method does, for the docs).
TABLE: dict[str, tuple[frozenset[Role], str]] = {
    AGENT + "Status": (CLIENT, "this node's status"),
    AGENT + "Members": (CLIENT, "the membership list"),
    AGENT + "Infer": (CLIENT, "run a model"),
    AGENT + "Submit": (CLIENT, "queue a task"),
    AGENT + "Wait": (CLIENT, "follow a task"),
    AGENT + "SubmitAndWait": (CLIENT, "queue and follow a task"),
    AGENT + "InferStream": (CLIENT, "run many inferences on one stream"),
    AGENT + "SubmitStream": (CLIENT, "queue and follow many tasks on one stream"),
    AGENT + "ListTasks": (CLIENT, "tasks this node originated"),
    AGENT + "Put": (CLIENT, "write state (namespaces starting with '_' are refused)"),
    AGENT + "Get": (CLIENT, "read state"),
    AGENT + "Delete": (CLIENT, "delete state (namespaces starting with '_' are refused)"),
    AGENT + "Increment": (CLIENT, "count in state (namespaces starting with '_' are refused)"),
    AGENT + "SetAdd": (CLIENT, "add to a set (namespaces starting with '_' are refused)"),
    AGENT + "SetRemove": (CLIENT, "remove from a set (namespaces starting with '_' are refused)"),
    AGENT + "Scan": (CLIENT, "list state"),
    AGENT + "Watch": (CLIENT, "follow state changes"),
    AGENT + "ListModels": (CLIENT, "list published models"),
    AGENT + "PullModel": (CLIENT, "fetch a published model onto this node"),
    AGENT + "PublishModel": (PUBLISHER, "publish a model (a model with code is code)"),
    AGENT + "DeleteModel": (PUBLISHER, "delete a model: a publisher its own, an admin any"),
    AGENT + "Revoke": (ADMIN, "revoke an identity on every node"),
    AGENT + "Average": (NODE, "average this node's parameters in a training run (node only)"),
    AGENT + "TrainStatus": (CLIENT, "training runs on this node"),
    AGENT + "Generate": (CLIENT, "generate text with a decoder model, streamed"),
    AGENT + "Embed": (CLIENT, "embed texts with a model folder"),
    AGENT + "Classify": (CLIENT, "classify texts with a model folder"),
    AGENT + "ClassifyTokens": (CLIENT, "tag the tokens of texts with a model folder"),
    PEER + "Gossip": (NODE, "membership probes"),
    PEER + "PushPull": (NODE, "membership state exchange"),
    PEER + "Replicate": (NODE, "state replication"),
    PEER + "FetchChunks": (NODE, "model chunks"),
    PEER + "Steal": (NODE, "work stealing"),
    PEER + "Assign": (NODE, "task hand-over"),
    PEER + "Complete": (NODE, "task results"),
    PEER + "Load": (NODE, "load reports"),
    PEER + "AverageParts": (NODE, "parameter averaging parts"),
    PEER + "GenerationLoad": (NODE, "a peer asks how busy generation is here"),
    PEER + "GenerateRelay": (NODE, "a generation a peer placed here, streamed back"),
    HEALTH + "Check": (CLIENT, "gRPC health"),
    HEALTH + "List": (CLIENT, "gRPC health"),
    HEALTH + "Watch": (CLIENT, "gRPC health"),
    REFLECTION + "ServerReflectionInfo": (CLIENT, "gRPC server reflection"),
    REFLECTION_V1ALPHA + "ServerReflectionInfo": (CLIENT, "gRPC server reflection (older name)"),
}

#: The order roles are listed in messages and docs.
ROLE_ORDER = (Role.CLIENT, Role.PUBLISHER, Role.ADMIN, Role.NODE)


def roles_for(method: str) -> frozenset[Role]:
    """The roles allowed to call ``method``; empty for a method missing from the table."""
    row = TABLE.get(method)
    return row[0] if row is not None else frozenset()


def weakest(roles: frozenset[Role]) -> Role | None:
    """The first role (in ROLE_ORDER) that is allowed: the one to ask for."""
    return next((r for r in ROLE_ORDER if r in roles), None)


def authorize(method: str, ident: Identity) -> None:
    """Raises PermissionDenied unless ``ident``'s role may call ``method``, saying which role
    the method needs and which role the caller has."""
    roles = roles_for(method)
    if ident.role in roles:
        return
    need = weakest(roles)
    if need is None:
        raise errors.PermissionDenied(
            f"{method} is not in the authorization table, so nobody may call it"
        )
    if need is Role.NODE:
        raise errors.PermissionDenied(
            f"{method} needs role node: {ident} has role {ident.role.value}, and the Peer "
            "service admits nodes only"
        )
    raise errors.PermissionDenied(
        f"{method} needs role {need.value} or stronger: {ident} has role {ident.role.value}; "
        f"call with a certificate issued with `p2pagentctl certs issue --role {need.value}`"
    )


def rows() -> Iterator[tuple[str, str, str]]:
    """(method, roles allowed, what it does) in table order, for the generated docs."""
    for method, (roles, what) in TABLE.items():
        allowed = ", ".join(r.value for r in ROLE_ORDER if r in roles)
        yield method, allowed, what


def render() -> str:
    """The table as markdown."""
    out = ["| method | roles allowed | what it does |", "|---|---|---|"]
    for method, allowed, what in rows():
        out.append(f"| `{method}` | {allowed} | {what} |")
    return "\n".join(out) + "\n"
