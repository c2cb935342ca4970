//! Hostile-tenant tests: identity (filled in by the change that hardens it).
