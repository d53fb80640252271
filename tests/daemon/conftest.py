"""The outage tests' broker: one of their own, apart from the session's.

The tests that stop and start a broker (test_broker_restart, test_broker_gone,
test_overlapping_outages) must not disturb the rest of the suite, so they never touch
the session's broker.  They used to start one broker each, formatted and started per
test (3-5 s apiece, about 20 s of the suite); they share one now, started once and
handed to each test running, whatever the test before it left behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.embedded.kafka import KafkaBroker, running_broker


@pytest.fixture(scope="session")
def _outage_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with running_broker(tmp_path_factory.mktemp("outage-kafka")) as own:
        yield own


@pytest.fixture
def broker(_outage_broker: KafkaBroker) -> KafkaBroker:
    """A broker the test may stop and start again (same port, same data), running when
    the test begins: one that failed while it was stopped does not leave it so."""
    process = _outage_broker.process
    if process is not None and process.poll() is not None:
        _outage_broker.stop()  # it died: forget the process, start it again below
    if _outage_broker.process is None:
        _outage_broker.start()
    return _outage_broker
