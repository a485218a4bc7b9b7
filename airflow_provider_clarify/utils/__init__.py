"""Small helpers shared by the hooks and operators (pure logic unless the module says otherwise)."""

from __future__ import annotations
