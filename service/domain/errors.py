"""The service's one exception hierarchy: the class of an error says whose fault it is.

``ConsumerGenError`` is the base of every exception the service defines.  Below it, one
branch per failure class of ``../shared/DESIGN.md`` (*Failure classes*), so a handler
can name the class it handles instead of a list of concrete errors:

* ``InvalidInput``: the record's (or the caller's) fault; retrying the same input can
  never help.  ``contract.decode.InvalidEvent``, ``domain.rules.InvalidEventError``,
  ``producer.ProduceError`` for a refused event.
* ``InfrastructureUnavailable``: the broker or the database cannot do the work *now*;
  back off and try again.  ``store.errors.TransientDatabaseError``,
  ``kafka.clients.BrokerUnavailable``, ``sinks.SinkUnavailable``.
* ``ConcurrencyConflict``: another writer changed what a transaction read; decide again
  from a fresh read (``store.StoreRace``).  Never leaves the apply path.
* ``ConfigurationError``: the service cannot start as configured (a setting, a schema
  that is not migrated, a missing codec library); an operator must act.

Anything else that escapes is a bug, and stops the daemon loudly.  Which *foreign*
errors (aiokafka's, the drivers') belong to which class is decided in
``service.failures``, the one place that knows them.
"""

from __future__ import annotations


class ConsumerGenError(Exception):
    """Base of every exception the service defines."""


class InvalidInput(ConsumerGenError):
    """The input (a record, an event, a command-line value) is at fault."""


class InfrastructureUnavailable(ConsumerGenError):
    """A server the service depends on cannot do the work now; nothing was done."""


class ConcurrencyConflict(ConsumerGenError):
    """Another writer won a race; the losing unit of work was rolled back."""


class ConfigurationError(ConsumerGenError):
    """The service cannot run as configured; the message names what to change."""
