"""AM flow's integrations (``model.am_flow.integration``), one module each, registered by name in
:data:`INTEGRATIONS` (the contract: :mod:`.base`). A new one is a module here that subclasses
:class:`Integration` and registers it, plus its name in the schema's ``Integration`` list."""
# Imported in the schema's order, which is the registry's (the order of the ablation grid's integrations).
from amflow.models.integrations import gate, attn_bias, channels, residual_gate, pool  # noqa: F401,I001 (they register)
from amflow.models.integrations.base import INTEGRATIONS, Integration, register

__all__ = ["INTEGRATIONS", "Integration", "register"]
