//! A hostile tenant, from outside: each finding of the wave-2 security review (issue 16)
//! replayed through the real server (and agent, where workloads are involved) as a project
//! member or an unauthenticated caller, asserting that it fails safely. One module per area.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "hostile_tenant/audit_fill.rs"]
mod audit_fill;
#[path = "hostile_tenant/edge.rs"]
mod edge;
#[path = "hostile_tenant/expressions.rs"]
mod expressions;
#[path = "hostile_tenant/identity.rs"]
mod identity;
#[path = "hostile_tenant/workloads.rs"]
mod workloads;
