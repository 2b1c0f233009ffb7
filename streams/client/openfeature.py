"""An OpenFeature provider backed by :class:`~driftswitch.streams.client.client.DriftswitchClient`.

Needs the ``openfeature`` extra (``pip install driftswitch[openfeature]``). Flags resolve from
the client's local cache, so an evaluation never touches the network and never raises:

========================================  ==========================================
what happened                              reason (error code)
========================================  ==========================================
the flag's targeting rule decided          ``TARGETING_MATCH``
the fractional split assigned the key      ``SPLIT`` (pseudorandom sticky assignment)
everyone gets one non-default variant      ``STATIC``
the state serves its default to everyone   ``DEFAULT`` (also when there is no targeting key)
no state held, a default is configured     ``DEFAULT``, the caller's default value
no state held, no default                  ``ERROR`` (``FLAG_NOT_FOUND``)
the variant's value has another type       ``ERROR`` (``TYPE_MISMATCH``)
evaluation failed                          ``ERROR`` (``GENERAL``)
========================================  ==========================================

``flag_metadata`` carries the state's ``version``. Every accepted flag change is emitted as
``PROVIDER_CONFIGURATION_CHANGED`` with ``flags_changed=[flag]``; the client's first read of the
flags topic emits it once per flag, for the flag's current state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.contract.events import FlagChangeEvent

__all__ = ["DriftswitchProvider"]

log = logging.getLogger(__name__)

_V = TypeVar("_V")


_REASONS = {
    "targeting": Reason.TARGETING_MATCH,
    "split": Reason.SPLIT,
    "static": Reason.STATIC,
    "default": Reason.DEFAULT,
}


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_object(value: object) -> bool:
    return isinstance(value, dict | list)


class DriftswitchProvider(AbstractProvider):
    """Resolves OpenFeature flags with driftswitch's flag state and flagd-equal assignment.

    Parameters
    ----------
    client
        The client whose cache answers. With ``manage_client=True`` the provider starts it in
        :meth:`initialize` and closes it in :meth:`shutdown`; otherwise the caller does.
    ready_timeout_s
        How long :meth:`initialize` waits for the first read of the flags topic. If it does
        not finish, the provider still becomes ready and serves defaults meanwhile.
    """

    def __init__(
        self,
        client: DriftswitchClient,
        *,
        manage_client: bool = False,
        ready_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.client = client
        self.manage_client = manage_client
        self.ready_timeout_s = ready_timeout_s
        self._unsubscribe: Callable[[], None] | None = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="driftswitch")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Subscribe to flag changes; start the client if the provider manages it."""
        if self._unsubscribe is None:
            self._unsubscribe = self.client.on_change(self._changed)
        if self.manage_client:
            self.client.start(self.ready_timeout_s)
        elif self.client.follow_flags:
            self.client.wait_bootstrapped(self.ready_timeout_s)
        if self.client.follow_flags and not self.client.bootstrapped:
            log.warning("driftswitch: flag state not read yet; serving defaults meanwhile")

    def shutdown(self) -> None:
        """Unsubscribe; close the client if the provider manages it."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.manage_client:
            self.client.close()

    def _changed(self, state: FlagChangeEvent) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=[state.flag], metadata={"version": state.version})
        )

    def _resolve(
        self,
        flag_key: str,
        default_value: _V,
        context: EvaluationContext | None,
        accepts: Callable[[object], bool],
    ) -> FlagResolutionDetails[_V]:
        attributes: Mapping[str, Any] = context.attributes if context else {}
        key = context.targeting_key if context else None
        resolution = self.client.resolve(flag_key, key, attributes)
        metadata = {} if resolution.version is None else {"version": resolution.version}
        if resolution.reason == "error":
            return FlagResolutionDetails(
                default_value,
                error_code=ErrorCode.GENERAL,
                error_message=resolution.error,
                reason=Reason.ERROR,
                variant=resolution.variant,
            )
        if resolution.reason == "unknown":
            if resolution.variant is None:
                return FlagResolutionDetails(
                    default_value,
                    error_code=ErrorCode.FLAG_NOT_FOUND,
                    error_message=f"no state for flag {flag_key!r} and no default configured",
                    reason=Reason.ERROR,
                )
            return FlagResolutionDetails(
                default_value, reason=Reason.DEFAULT, variant=resolution.variant
            )
        value = resolution.value
        if not accepts(value):
            return FlagResolutionDetails(
                default_value,
                error_code=ErrorCode.TYPE_MISMATCH,
                error_message=(
                    f"variant {resolution.variant!r} of {flag_key!r} has a "
                    f"{type(value).__name__} value"
                ),
                reason=Reason.ERROR,
                variant=resolution.variant,
                flag_metadata=metadata,
            )
        reason = _REASONS[resolution.reason]
        return FlagResolutionDetails(
            cast(_V, value), reason=reason, variant=resolution.variant, flag_metadata=metadata
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, _is_bool)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, _is_str)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, _is_int)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        details = self._resolve(flag_key, default_value, evaluation_context, _is_number)
        details.value = float(details.value)
        return details

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._resolve(flag_key, default_value, evaluation_context, _is_object)
