"""Vendor contracts as pure functions: validation rules and answer bodies, shared by the sandboxes
(which play the vendor) and the vendor-compatible inputs (which must answer as the vendor does)."""
