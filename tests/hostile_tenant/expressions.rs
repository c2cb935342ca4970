//! Hostile-tenant tests: expressions (filled in by the change that hardens it).
