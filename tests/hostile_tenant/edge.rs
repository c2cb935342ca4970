//! Hostile-tenant tests: edge (filled in by the change that hardens it).
