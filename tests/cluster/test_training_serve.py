"""Train, then serve: two daemons train the digits MLP on non-IID shards, averaging through
the mesh and publishing every two rounds; a third daemon that never trained serves the
published version with ``Infer``, and its answers are the averaged model's."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import tensors
from p2pagent.testing.cluster import Cluster
from p2pagent.training import digits
from p2pagent.training.demo import DigitsPlan, accuracy_of, federated, held_out_inputs

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Phase timeouts of at least 2 s: the loops share this process and a loaded machine.
    env = {"P2PAGENT_TRAINING__MIN_PHASE_TIMEOUT": "2.0"}
    with Cluster(tmp_path_factory.mktemp("serve"), 3, use_netns=False, env=env) as c:
        c.start()
        names = list(c.nodes)
        c.wait_for(
            lambda: all(
                {n for n, (s, _) in c.members(o).items() if s == "alive"} >= set(names)
                for o in names
            ),
            SETTLE_S,
            "all members alive",
        )
        yield c


def test_the_published_version_answers_infer_on_a_node_that_never_trained(three: Cluster) -> None:
    plan = DigitsPlan(rounds=4, local_epochs=1.0, publish_every=2)
    runs = federated({n: three.agent(n, n) for n in ("n1", "n2")}, plan)
    assert all(not r.error for r in runs.values()), {n: r.error for n, r in runs.items()}
    # Class-disjoint shards: n1 holds the even digits, n2 the odd ones.
    assert set(runs["n1"].classes).isdisjoint(runs["n2"].classes)
    final = runs["n1"].params
    rounds = {n: [(r.round_no, r.complete, r.group) for r in runs[n].results] for n in runs}
    assert rounds["n1"] == rounds["n2"], rounds
    for key in final:
        assert final[key].tobytes() == runs["n2"].params[key].tobytes()
    assert accuracy_of(final, plan.seed) > 0.5  # well above chance (0.1) after 4 rounds
    published = runs["n1"].published + runs["n2"].published
    assert len(published) == 2  # rounds 1 and 3, by the group's one publisher
    latest = published[-1]
    x, _ = held_out_inputs(plan.seed, 16)
    three.wait_for(
        lambda: (
            latest
            in {
                v.manifest_id
                for v in three.agent("n3")
                .ListModels(agent_pb2.ListModelsRequest(name="digits"), timeout=10)
                .versions
            }
        ),
        60,
        "n3 knows the latest version",
    )
    request = agent_pb2.InferRequest(
        model="digits",
        model_version=latest,
        inputs=[tensors.to_proto("input", torch.from_numpy(x))],
    )
    reply = three.agent("n3").Infer(request, timeout=120)
    got = tensors.from_proto(reply.outputs[0], 1 << 20).numpy()
    model = digits.make_model(plan.seed)
    digits.load_params(model, final)
    assert isinstance(model, torch.nn.Module)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    versions = three.agent("n3").ListModels(agent_pb2.ListModelsRequest(name="digits"), timeout=10)
    assert latest in {v.manifest_id for v in versions.versions}
    status = three.agent("n1").TrainStatus(agent_pb2.TrainStatusRequest(run="digits"), timeout=5)
    assert status.runs[0].last_published == latest
