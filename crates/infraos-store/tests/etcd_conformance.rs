//! The etcd backend runs the whole conformance suite against a real etcd (Debian's
//! `etcd-server`), one member per test on loopback ports.
#![cfg(feature = "etcd")]

infraos_store::store_conformance_tests!(infraos_store::conformance::EtcdHarness::new());
