//! Hostile-tenant tests: audit_fill (filled in by the change that hardens it).
