"""What techniques and callbacks share: the Trainer's event hooks and the state a component
checkpoints (:class:`EventHooks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = ["EventHooks"]


class EventHooks:
    """The event hooks of the Trainer's loop (see ``heldout.engine.events``), all no-ops, and
    the ``state_dict`` / ``load_state_dict`` pair for state that must survive a resume
    (tensors and plain Python values only). Subclasses are dataclasses."""

    registry_name: ClassVar[str]
    component_kind: ClassVar[str] = "component"  # how messages name it: "technique", ...

    def __post_init__(self) -> None:
        """Subclasses (dataclasses) check their parameters here; bounds declared on the
        fields (:mod:`heldout.core.bounds`) are checked before, by the registry."""

    @property
    def name(self) -> str:
        return getattr(self, "registry_name", type(self).__name__)

    def on_fit_start(self, state: State) -> None: ...
    def on_batch_start(self, state: State) -> None: ...
    def on_after_backward(self, state: State) -> None: ...
    def on_after_step(self, state: State) -> None: ...
    def on_eval(self, state: State, metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, state: State) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.component_kind} {self.name} keeps no state but was given "
                             f"{list(state)}")
