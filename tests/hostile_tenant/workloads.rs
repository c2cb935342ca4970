//! Hostile-tenant tests: workloads (filled in by the change that hardens it).
